"""dLoRA's workloads: requests of many adapters with skewed popularity.

Lengths (prompt, output) are drawn from the shipped Azure LLM inference trace (conversation
by default; the paper uses ShareGPT lengths), arrivals are Gamma with a coefficient of
variation (1 = Poisson; the paper's bursty traces are above 1), and each request's adapter is
drawn from a Zipf popularity over ``n_adapters`` (exponent ``skew``; 0 = uniform; dLoRA maps
adapters to the Azure Functions popularity, which is similarly heavy-tailed).
"""

from __future__ import annotations

import functools

import numpy as np

from core.lora import LoRARequest
from core.workload.arrivals import gamma_arrivals
from core.workload.azure import load_azure
from core.workload.generators import zipf_weights
from core.workload.schema import Request

__all__ = ["adapter_name", "lora_workload", "popularity"]


def adapter_name(k: int) -> str:
    return f"lora{k}"


def popularity(n_adapters: int, skew: float) -> dict[str, float]:
    """Each adapter's share of requests under Zipf(``skew``)."""
    w = zipf_weights(n_adapters, skew)
    return {adapter_name(k): float(p) for k, p in enumerate(w)}


@functools.cache
def _azure_lengths(kind: str) -> tuple[np.ndarray, np.ndarray]:
    w = load_azure(kind=kind)  # type: ignore[arg-type]
    return np.array([r.prompt_len for r in w]), np.array([r.output_len for r in w])


def lora_workload(
    n: int,
    rate: float,
    *,
    n_adapters: int,
    skew: float,
    seed: int,
    cv: float = 1.0,
    rank: int = 16,
    lengths: str = "conv",
    max_prompt: int = 2048,
    max_output: int = 512,
) -> list[Request]:
    """``n`` requests at ``rate`` per second (see the module docstring); each carries its
    adapter as ``metadata["lora"]`` (a :class:`~core.lora.LoRARequest` of ``rank``)."""
    rng = np.random.default_rng(seed)
    prompts, outputs = _azure_lengths(lengths)
    rows = rng.integers(0, len(prompts), n)
    arrivals = gamma_arrivals(n, rate, cv, seed=seed)
    which = rng.choice(n_adapters, size=n, p=zipf_weights(n_adapters, skew))
    return [
        Request(
            f"r{i}",
            float(arrivals[i]),
            int(min(max(prompts[rows[i]], 1), max_prompt)),
            int(min(max(outputs[rows[i]], 1), max_output)),
            metadata={"lora": LoRARequest(adapter_name(int(k)), int(k) + 1, rank=rank)},
        )
        for i, k in enumerate(which)
    ]
