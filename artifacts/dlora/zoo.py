"""Real mode on a trained model: the zoo's small Llama with LoRA adapters fine-tuned on
sub-tasks (:mod:`core.lora.train`), served by our engine on this CPU under every batching
policy.

A request stream (Poisson arrivals, adapters drawn by Zipf popularity, each request one
held-out problem of its adapter's sub-task) is replayed in real time
(:func:`core.engine.serve.replay`) once per policy and round, the policies interleaved and
their order rotated each round. Every output is checked three ways: against the same request
run alone with its adapter (exactness of the batching), against the task's answer (the
adapter's accuracy, beside the base model's on the same prompts), and its latency.

The folders: ``$DLORA_MODEL`` or ``data/models/zoo-small`` (the base checkpoint) and
``$DLORA_ADAPTERS`` or ``data/models/zoo-small-lora`` (one PEFT folder per sub-task). Without
them the experiment has no points and its claims are not checked.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import DATA_DIR, sha256_file, track_data_file
from core.engine import LLM, LoRARequest, SamplingParams
from core.engine.engine import RequestOutput
from core.engine.serve import replay
from core.lora.tasks import ADAPTER_TASKS, check_final
from core.lora.train import heldout_set
from core.workload.arrivals import poisson_arrivals
from core.workload.generators import zipf_weights
from core.workload.schema import Request
from core.zoo.tasks import EOS, check_answer

from .real import POLICIES

__all__ = ["MODEL_ENV", "ADAPTERS_ENV", "folders", "missing", "run_zoo", "zoo_stream"]

MODEL_ENV, ADAPTERS_ENV = "DLORA_MODEL", "DLORA_ADAPTERS"


def folders() -> tuple[Path, Path]:
    """The base checkpoint and the adapters' folder (see the module docstring)."""
    base = os.environ.get(MODEL_ENV) or DATA_DIR / "models" / "zoo-small"
    adapters = os.environ.get(ADAPTERS_ENV) or DATA_DIR / "models" / "zoo-small-lora"
    return Path(base), Path(adapters)


def adapter_names(adapters: Path) -> list[str]:
    """The sub-tasks with a trained adapter folder under ``adapters``, in a fixed order."""
    return [n for n in ADAPTER_TASKS if (adapters / n / "adapter_config.json").is_file()]


def missing() -> str:
    """Why real mode on the zoo model cannot run ('' when it can)."""
    base, adapters = folders()
    if not (base / "config.json").is_file():
        return f"no base checkpoint at {base} (set ${MODEL_ENV})"
    if len(adapter_names(adapters)) < 2:
        return f"fewer than two trained adapters under {adapters} (set ${ADAPTERS_ENV})"
    return ""


def zoo_stream(
    llm: LLM, loras: list[LoRARequest], n: int, rate: float, skew: float, seed: int
) -> list[Request]:
    """``n`` requests at Poisson ``rate``: adapter ``k`` with Zipf(``skew``) popularity, the
    prompt the next unused held-out problem of its sub-task (``metadata``: ``lora``,
    ``task``, the problem in the task's and in the zoo's format)."""
    rng = np.random.default_rng(seed)
    which = rng.choice(len(loras), size=n, p=zipf_weights(len(loras), skew))
    arrivals = poisson_arrivals(n, rate, seed)
    problems = {lr.lora_name: heldout_set(ADAPTER_TASKS[lr.lora_name], n) for lr in loras}
    used = dict.fromkeys(problems, 0)
    out = []
    for i, (k, t) in enumerate(zip(which, arrivals, strict=True)):
        lr = loras[int(k)]
        original, styled = problems[lr.lora_name][used[lr.lora_name]]
        used[lr.lora_name] += 1
        assert llm.tokenizer is not None
        ids = list(llm.tokenizer.encode(styled.prompt).ids)
        out.append(
            Request(
                f"r{i}",
                float(t),
                len(ids),
                ADAPTER_TASKS[lr.lora_name].max_tokens,
                prompt_token_ids=ids,
                metadata={"lora": lr, "task": lr.lora_name, "styled": styled, "zoo": original},
            )
        )
    return out


def _text(llm: LLM, ids: list[int]) -> str:
    assert llm.tokenizer is not None
    return llm.tokenizer.decode(ids)


def _correct(llm: LLM, req: Request, out: RequestOutput, *, zoo: bool = False) -> bool:
    text = _text(llm, out.token_ids)
    stopped = out.finish_reason == "stop"
    if zoo:
        return stopped and check_answer(req.metadata["zoo"], text.split(EOS, 1)[0] + EOS)
    return check_final(req.metadata["styled"], text, stopped)


def run_zoo(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy and round (see the module docstring); torch on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_zoo(config)
    finally:
        torch.set_num_threads(threads)


def _make_llm(config: dict[str, Any], n_loras: int, **kw: Any) -> LLM:
    return LLM(
        config["model"],
        enable_lora=True,
        max_loras=n_loras,
        max_lora_rank=config["rank"],
        seed=config["seed"],
        **kw,
    )


def _run_zoo(config: dict[str, Any]) -> list[dict[str, Any]]:
    base, adapters = Path(config["model"]), Path(config["adapters"])
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        track_data_file(base / f)
    names = adapter_names(adapters)
    loras = [LoRARequest(n, i + 1, str(adapters / n)) for i, n in enumerate(names)]
    for lr in loras:
        track_data_file(Path(lr.lora_path) / "adapter_model.safetensors")

    ref = _make_llm(config, len(loras), max_num_seqs=1)
    stream = zoo_stream(
        ref, loras, config["requests"], config["rate"], config["skew"], config["seed"]
    )
    eos = ref.eos_token_id
    stops = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []

    def params(r: Request) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=r.output_len, stop_token_ids=stops)

    # references: each request alone with its adapter, and the base model on the same prompts
    alone, on_base = [], []
    for r in stream:
        ids = r.prompt_token_ids or []
        alone.append(
            ref.generate([ids], params(r), lora_request=r.metadata["lora"], use_tqdm=False)[0]
        )
        on_base.append(ref.generate([ids], params(r), use_tqdm=False)[0])
    accuracy: dict[str, Any] = {}
    for name in names:
        mine = [i for i, r in enumerate(stream) if r.metadata["task"] == name]
        accuracy[f"n_{name}"] = len(mine)
        accuracy[f"acc_{name}"] = _share(_correct(ref, stream[i], alone[i]) for i in mine)
        accuracy[f"base_acc_{name}"] = _share(_correct(ref, stream[i], on_base[i]) for i in mine)
        accuracy[f"base_zoo_acc_{name}"] = _share(
            _correct(ref, stream[i], on_base[i], zoo=True) for i in mine
        )
    distinct_from_base = _share(
        a.token_ids != b.token_ids for a, b in zip(alone, on_base, strict=True)
    )

    rows = []
    policies = list(POLICIES.items())
    for rnd in range(config["rounds"]):
        shift = rnd % len(policies)
        for name, sched in policies[shift:] + policies[:shift]:
            llm = _make_llm(
                config, len(loras), max_num_seqs=config["max_num_seqs"], lora_scheduler=sched
            )
            cpu0, wall0 = time.process_time(), time.perf_counter()
            done = replay(llm.engine, stream, sampling=params)
            cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
            outs = {d.request_id: RequestOutput.from_request(d) for d in done}
            got = [outs[r.request_id] for r in stream]
            e2e = [o.e2e for o in got if o.e2e is not None]
            per_token = [o.e2e / max(1, len(o.token_ids)) for o in got if o.e2e is not None]
            assert llm.lora is not None
            st = llm.lora.stats
            tokens = sum(len(o.token_ids) for o in got)
            rows.append(
                {
                    "policy": name,
                    "round": rnd,
                    "requests_run": len(stream),
                    "identical_fraction": _share(
                        o.token_ids == a.token_ids for o, a in zip(got, alone, strict=True)
                    ),
                    "accuracy": _share(
                        _correct(llm, r, o) for r, o in zip(stream, got, strict=True)
                    ),
                    "latency_s": statistics.fmean(e2e),
                    "p90_latency_s": float(np.percentile(e2e, 90)),
                    "per_token_latency_s": statistics.fmean(per_token),
                    "ttft_s": statistics.fmean(o.ttft for o in got if o.ttft is not None),
                    "throughput_tok_s": tokens / wall_s,
                    "wall_s": wall_s,
                    "cpu_s": cpu_s,
                    "merges": st.merges,
                    "switch_s": st.switch_s,
                    "distinct_from_base": distinct_from_base,
                    **accuracy,
                }
            )
    return rows


def _share(flags: Any) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else float("nan")


def zoo_config(requests: int, rate: float, rounds: int, seed: int) -> list[dict[str, Any]]:
    """The experiment's point (none without the model and adapters): the folders and their
    weights' hashes are part of it, so new weights are a new point."""
    if missing():
        return []
    base, adapters = folders()
    names = adapter_names(adapters)
    return [
        dict(
            model=str(base),
            adapters=str(adapters),
            model_sha=sha256_file(base / "model.safetensors")[:16],
            adapters_sha=[
                sha256_file(adapters / n / "adapter_model.safetensors")[:16] for n in names
            ],
            rank=8,
            requests=requests,
            rate=rate,
            skew=1.0,
            rounds=rounds,
            max_num_seqs=8,
            seed=seed,
        )
    ]
