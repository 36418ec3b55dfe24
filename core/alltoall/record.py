"""Record the token -> expert routing of a running MoE model (needs torch).

:class:`RoutingRecorder` hooks the router (``gate``) of every :class:`~core.model.mixtral.
SparseMoE` of a model and counts, per MoE layer, the tokens each *source* sends to each expert
(top-k: a token counts once per chosen expert), exactly as the layer chooses them (softmax in
fp32, then top-k). The caller says which source the tokens of the next forwards come from
(``recorder.source = s``): e.g. the data-parallel rank whose requests they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from core.model.mixtral import SparseMoE


class RoutingRecorder:
    """Counts ``[sources, experts]`` per MoE layer while attached (a context manager)."""

    def __init__(self, model: nn.Module, sources: int) -> None:
        self.moes = [m for m in model.modules() if isinstance(m, SparseMoE)]
        if not self.moes:
            raise ValueError(f"{type(model).__name__} has no SparseMoE layer to record")
        if sources < 1:
            raise ValueError(f"sources must be >= 1, got {sources}")
        experts = self.moes[0].gate.out_features
        self.counts = np.zeros((len(self.moes), sources, experts))
        self.source = 0
        self._handles: list[Any] = []

    def _hook(self, layer: int, top_k: int):
        def record(module: nn.Module, args: Any, logits: torch.Tensor) -> None:
            probs = torch.softmax(logits.float(), dim=-1)
            chosen = torch.topk(probs, top_k, dim=-1).indices.reshape(-1)
            counts = torch.bincount(chosen, minlength=self.counts.shape[2])
            self.counts[layer, self.source] += counts.cpu().numpy()

        return record

    def __enter__(self) -> RoutingRecorder:
        for i, moe in enumerate(self.moes):
            self._handles.append(moe.gate.register_forward_hook(self._hook(i, moe.top_k)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def record_tiny_moe_routing(
    *,
    sources: int,
    experts: int,
    prompts_per_source: int,
    prompt_len: int,
    new_tokens: int,
    seed: int,
    top_k: int = 2,
    layers: int = 2,
) -> np.ndarray:
    """Serve random prompts on a random-initialized tiny Mixtral (the ``tiny-mixtral`` preset
    with ``experts`` experts and ``layers`` layers) through the offline engine, one batch of
    requests per source, and return the recorded counts ``[layers, sources, experts]``. Each
    source draws its prompt tokens from its own quarter of the vocabulary, as requests of
    different kinds land on different ranks."""
    from core.engine.llm import LLM
    from core.engine.sampling import SamplingParams
    from core.model import preset_config

    cfg = preset_config("tiny-mixtral") | {
        "num_local_experts": experts,
        "num_experts_per_tok": top_k,
        "num_hidden_layers": layers,
    }
    llm = LLM(cfg, seed=seed, kv_cache_memory=16 * 2**20)
    vocab = int(cfg["vocab_size"])
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    with RoutingRecorder(llm.model, sources) as rec:
        for s in range(sources):
            lo = (s % 4) * vocab // 4
            prompts = [
                rng.integers(lo, lo + vocab // 4, size=prompt_len).tolist()
                for _ in range(prompts_per_source)
            ]
            rec.source = s
            llm.generate(prompts, params, use_tqdm=False)
    return rec.counts
