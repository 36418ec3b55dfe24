"""The ``--peers`` part of the engine benchmark: its workload, its targets and its tables.

:func:`run_part` builds the jobs from the engine benchmark's own offline workload (same seed,
same sizes) and a batch-1 decode pair, then runs :class:`.run.PeerRun` at each thread count;
:func:`targets` turns the ratios into the issue's targets; :func:`render` prints them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import report as rep
from . import compare
from .run import OURS, PeerRun
from .systems import OURS as OURS_SYSTEM
from .systems import PEERS

DEFAULT_THREADS = (1, 2)
DEFAULT_ROUNDS = 3
# (peer, part) pairs the issue sets a target on: ours >= the peer
TARGET_PAIRS = (("vllm", "offline"), ("llama.cpp", "decode"))
PART_NAMES = {"offline": "offline tokens/s", "decode": "batch-1 decode tokens/s"}


def parse_systems(text: str) -> tuple[str, ...]:
    """``--peer-systems``: a comma-separated subset of the peers, in the order given."""
    import argparse

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in PEERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(bad) or repr(text)}; choose from {', '.join(PEERS)}"
        )
    return names


def kv_tokens(job: compare.Job, block_size: int) -> int:
    """KV cache size in tokens for every system: the whole workload at once (each request's
    prompt and output, plus a block of slack each), x1.25, as the engine benchmark sizes
    ours, so nobody is slowed by preemption."""
    need = sum(len(p) + n + block_size for p, n in zip(job.prompts, job.max_tokens, strict=True))
    return int(1.25 * need)


def run_part(
    ckpt: Path,
    scale: Any,
    seed: int,
    dtype: str,
    threads: Sequence[int],
    rounds: int,
    peers: Sequence[str],
    work: Path,
    logs: Path,
    log: Callable[[str], None] = print,
    on_update: Callable[[dict[str, Any]], None] = lambda res: None,
) -> dict[str, Any]:
    """Ours against ``peers`` on the engine benchmark's offline workload and batch-1 decode, at
    each thread count; the result dict also holds the method and the measured bandwidth."""
    from core.model.spec import ModelSpec

    from .. import roofline as rf
    from ..engine import DTYPES, MODEL_PRESET, Tokens, make_workload

    spec = ModelSpec.from_preset(MODEL_PRESET)
    wl = make_workload(scale, spec.vocab_size, seed)
    job = compare.Job(wl.prompts, wl.output_lens)
    tok = Tokens(spec.vocab_size, seed + 2)
    steps = 2 * scale.decode_steps
    decode = compare.DecodeJobs.make(
        tok.prompt(scale.decode_context), tok.prompt(scale.decode_context), steps
    )
    longest = max(len(p) + n for p, n in zip(job.prompts, job.max_tokens, strict=True))
    longest = max(longest, scale.decode_context + steps + 1)
    load = {
        "max_num_seqs": scale.max_num_seqs,
        "max_num_batched_tokens": scale.max_num_batched_tokens,
        "max_model_len": 256 * math.ceil(longest / 256),
        "kv_tokens": kv_tokens(job, scale.block_size),
        "kv_bytes_per_token": spec.kv_bytes_per_token(DTYPES[dtype]),
    }
    runner = PeerRun(
        [OURS_SYSTEM, *(PEERS[n] for n in peers)],
        ckpt,
        work,
        logs,
        job,
        decode,
        load,
        dtype=dtype,
        log=log,
        on_update=lambda: on_update(runner.res),
    )
    res = runner.res
    res.update(
        {
            "method": (
                "each system in its own worker process (a peer in its own cached venv), model "
                "loaded once per thread count, warm-up (the offline workload and the decode pair, "
                "untimed), then rounds; each round runs the offline "
                "workload on every system in turn, then the batch-1 decode pair, the order "
                "rotated every round; ratio = median over rounds of ours / peer in the same round"
            ),
            "workload": wl.describe(),
            "decode": {
                "prompt_len": scale.decode_context,
                "steps": steps,
                "how": "tokens/s = steps / (time to generate 1 + steps tokens - time to generate "
                "1 token), two single-request runs with equally long prompts",
            },
            "load_request": load,
            "threads_run": list(threads),
            "rounds": rounds,
            "weight_bytes": spec.weight_bytes(DTYPES[dtype]),
        }
    )
    bw = rf.measure_bandwidth(scale.bandwidth_mib)
    res["bandwidth_bytes_per_s"] = bw["bandwidth"]
    return runner.run(threads, rounds)


def targets(peers: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One target per (dtype, thread count, target pair): ours / peer >= 1, or not checked with
    the reason (peer unavailable, failed, or not asked for)."""
    out: list[dict[str, Any]] = []
    for dtype, res in (peers or {}).items():
        for t in res.get("threads_run", []):
            tr = res["threads"].get(str(t), {})
            for peer, part in TARGET_PAIRS:
                if peer not in res["systems"]:
                    continue
                ratio = (tr.get(part) or {}).get("ratios", {}).get(peer, {}).get("ratio")
                reason = _why_missing(res, tr, peer)
                out.append(
                    rep.target(
                        f"peers_{part}_vs_{peer}_{dtype}_t{t}",
                        f"{PART_NAMES[part]} of our engine / {peer}, {dtype}, {t} thread(s)",
                        ratio,
                        ">=",
                        1.0,
                        "x",
                        reason=reason if ratio is None or ratio != ratio else None,
                    )
                )
    return out


def _why_missing(res: dict[str, Any], tr: dict[str, Any], peer: str) -> str:
    sysinfo = res["systems"].get(peer, {})
    if sysinfo.get("status") != "ok":
        return f"{peer} unavailable: {str(sysinfo.get('reason', '')).splitlines()[0][:160]}"
    for name in (OURS, peer):
        if name in tr.get("errors", {}):
            return f"{name} failed: {tr['errors'][name].splitlines()[0][:160]}"
    return "not measured"


def render(peers: dict[str, Any] | None) -> str:
    """The ratio table per dtype (one row per thread count and system) and why any system is
    missing."""
    blocks = []
    for dtype, res in (peers or {}).items():
        rows: list[list[Any]] = []
        load_lines: list[str] = []
        weights, bw = res.get("weight_bytes"), res.get("bandwidth_bytes_per_s")
        for t in res.get("threads_run", []):
            tr = res["threads"].get(str(t))
            if not tr or "offline" not in tr:
                continue
            for name in res["systems"]:
                off, dec = tr["offline"], tr["decode"]
                o_tps, d_tps = off["tokens_per_s"].get(name), dec["tokens_per_s"].get(name)
                if o_tps is None and d_tps is None:
                    continue
                o_r = off["ratios"].get(name, {}).get("ratio")
                d_r = dec["ratios"].get(name, {}).get("ratio")
                agree = tr.get("agreement", {}).get(name, {})
                gbs = d_tps * weights / 1e9 if d_tps and weights and d_tps == d_tps else None
                rows.append(
                    [
                        t,
                        res["systems"][name]["label"],
                        o_tps,
                        o_r,
                        d_tps,
                        d_r,
                        gbs,
                        _agree(agree),
                        tr["deterministic"].get(name),
                    ]
                )
            loads = [tr[p]["loadavg_1m"] for p in ("offline", "decode")]
            load_lines.append(
                f"  {t} thread(s): offline "
                + ", decode ".join(f"{x['min']:.2f}-{x['max']:.2f}" if x else "-" for x in loads)
            )
        title = f"== peers, {dtype}: ratios are ours / that system (median over rounds)"
        if bw:
            title += f"; bandwidth measured here {bw / 1e9:.1f} GB/s"
        blocks.append(
            rep.format_table(
                [
                    "threads",
                    "system",
                    "offline tok/s",
                    "ours/it",
                    "b1 decode tok/s",
                    "ours/it",
                    "b1 weights GB/s",
                    "greedy agree 1/16/all",
                    "same every round",
                ],
                rows,
                title=title,
                formats=[None, None, ".1f", ".2f", ".1f", ".2f", ".1f", None, None],
            )
        )
        if load_lines:
            blocks.append("load average (1 min) sampled before each job:\n" + "\n".join(load_lines))
        notes = [
            f"  {n}: {info['status']}: {info.get('reason', '')}"
            for n, info in res["systems"].items()
            if info.get("status") != "ok"
        ]
        for t, tr in res["threads"].items():
            notes += [f"  {n} ({t} threads): {e}" for n, e in tr.get("errors", {}).items()]
            idle = {n: s for n, s in tr.get("idle_cpu_s", {}).items() if s > 1.0}
            notes += [f"  {n} ({t} threads) used {s:.1f} CPU s while idle" for n, s in idle.items()]
        if notes:
            blocks.append("not compared / warnings:\n" + "\n".join(notes))
    return "\n\n".join(blocks)


def _agree(a: dict[str, Any]) -> str:
    if not a:
        return ""
    return "/".join(f"{a[k]:.2f}" for k in ("first_1", "first_16", "exact"))
