"""Real mode: LoRA serving on this CPU with our engine.

``policies``: a tiny random Llama with four random adapters written in the PEFT format, one
batch of requests with Zipf-skewed adapters, served by the engine under each batching policy
(unmerged/S-LoRA, merged-only/vLLM, one-adapter/PEFT, dLoRA); every request's greedy output is
compared with the same request run alone with its adapter. ``profile``: merged/unmerged step
times and merge cost measured on this CPU (:func:`core.lora.profile.measure_lora`), the
numbers the CPU-scale simulator takes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.engine import LLM, LoRARequest, SamplingParams
from core.lora.adapter import save_adapter
from core.lora.profile import measure_lora
from core.lora.runtime import adaptable_linears
from core.model import load_model
from core.workload.generators import zipf_weights

from .batching import DLoRAScheduler

__all__ = ["POLICIES", "TINY", "run_policies", "run_profile"]

TINY = dict(
    model_type="llama",
    vocab_size=512,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.1,
)
PROFILE_MODEL = dict(TINY, hidden_size=256, intermediate_size=688, num_hidden_layers=4)
POLICIES: dict[str, Any] = {
    "slora": "unmerged",
    "vllm": "merged",
    "peft": "single",
    "dlora": DLoRAScheduler,
}


def write_adapters(folder: Path, n: int, rank: int, seed: int) -> list[LoRARequest]:
    """``n`` random PEFT adapters of ``rank`` for :data:`TINY` under ``folder``."""
    net, _ = load_model(TINY, dtype=torch.float32, device="cpu", seed=seed)
    shapes = {
        s.hf_module: (module.in_features, s.size)
        for _, module, slices in adaptable_linears(net)
        for s in slices
    }
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        weights = {
            hf: (
                torch.randn(rank, fin, generator=g) * 0.3,
                torch.randn(fout, rank, generator=g) * 0.3,
            )
            for hf, (fin, fout) in sorted(shapes.items())
        }
        path = save_adapter(folder / f"lora{k}", weights, lora_alpha=rank)
        out.append(LoRARequest(f"lora{k}", k + 1, str(path)))
    return out


def run_policies(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy on the same requests, in order; one row each. torch runs on one thread (a
    tiny model's small ops run faster so, and far faster when other jobs share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_policies(config)
    finally:
        torch.set_num_threads(threads)


def _run_policies(config: dict[str, Any]) -> list[dict[str, Any]]:
    seed = config["seed"]
    folder = Path(config["workdir"]) / f"adapters-{seed}"
    loras = write_adapters(folder, config["adapters"], config["rank"], seed)
    rng = np.random.default_rng(seed)
    n = config["requests"]
    which = rng.choice(len(loras), size=n, p=zipf_weights(len(loras), config["skew"]))
    prompts = [rng.integers(3, 500, int(rng.integers(8, 40))).tolist() for _ in range(n)]
    lreqs = [loras[int(k)] for k in which]
    params = SamplingParams(temperature=0, max_tokens=config["max_tokens"], ignore_eos=True)
    common = dict(seed=seed, enable_lora=True, max_loras=len(loras), max_lora_rank=config["rank"])
    ref_llm = LLM(TINY, **common, max_num_seqs=1)
    alone = [
        ref_llm.generate([p], params, lora_request=lr, use_tqdm=False)[0].token_ids
        for p, lr in zip(prompts, lreqs, strict=True)
    ]
    rows = []
    for name, sched in POLICIES.items():
        llm = LLM(TINY, **common, max_num_seqs=config["max_num_seqs"], lora_scheduler=sched)
        t0 = time.process_time()
        outs = llm.generate(prompts, params, lora_request=lreqs, use_tqdm=False)
        cpu_s = time.process_time() - t0
        same = sum(o.token_ids == a for o, a in zip(outs, alone, strict=True))
        assert llm.lora is not None
        st = llm.lora.stats
        rows.append(
            {
                "policy": name,
                "requests_run": n,
                "identical_fraction": same / n,
                "completed_fraction": sum(o.finished for o in outs) / n,
                "cpu_s": cpu_s,
                "merges": st.merges,
                "unmerges": st.unmerges,
                "switch_s": st.switch_s,
                "distinct_outputs": len({tuple(a) for a in alone}),
            }
        )
    return rows


def run_profile(config: dict[str, Any]) -> dict[str, Any]:
    """LoRA's costs on this CPU: rho = merged / unmerged decode step at each batch size (the most
    adapters the batch holds), the fitted profile and the merge/unmerge times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config["threads"])
    try:
        r = measure_lora(
            PROFILE_MODEL,
            rank=config["rank"],
            batch_sizes=(1, 8, 32),
            adapter_counts=(1, 4, 16),
            rounds=config["rounds"],
            seed=config["seed"],
        )
    finally:
        torch.set_num_threads(threads)
    p = r["lora"]
    return {
        "rho_b1": r["rho"][1],
        "rho_b8": r["rho"][8],
        "rho_b32": r["rho"][32],
        "merge_s": p.merge_s,
        "unmerge_s": p.unmerge_s,
        "unmerged_fixed_s": p.unmerged_fixed_s,
        "unmerged_per_adapter_s": p.unmerged_per_adapter_s,
        "unmerged_per_token_s": p.unmerged_per_token_s,
        "base_fixed_s": r["base"].fixed_s,
        "base_per_token_s": r["base"].per_token_s,
        "decode32_base_s": next(
            s["step_s"]
            for s in r["samples"]
            if s["kind"] == "decode" and s["batch"] == 32 and s["mode"] == "base"
        ),
    }
