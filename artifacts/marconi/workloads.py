"""The request streams Marconi's experiments replay: synthetic sessions, Mooncake, ``--trace``.

Every stream is a :class:`~core.workload.Workload` whose requests carry prompt *and* output
token ids, because the cache stores the whole sequence (prompt + output) for the next turn.
Traces without output ids (Mooncake, a bare-lengths Marconi JSONL) get fresh random output
tokens, seeded per request: outputs are never shared across requests there.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.workload import Workload, detect_format, expand_block_tokens, load_trace

from .sessions import lmsys_like, sharegpt_like, swebench_like

SESSION_WORKLOADS = ("lmsys", "sharegpt", "swebench")
MOONCAKE = "mooncake"
# the authors' traces have 100 sessions each (``nums=100`` in their result files)
NUM_SESSIONS = 100
# Marconi's cap: a request's input is the conversation so far, at most 32K tokens
MAX_CONTEXT = 32768


@lru_cache(maxsize=4)
def session_workload(
    name: str, rate: float, num_sessions: int, seed: int, response_time_s: float = 5.0
) -> Workload:
    """``num_sessions`` sessions of the named workload starting Poisson at ``rate`` per second;
    ``response_time_s`` is the SWE-bench agent's mean gap between turns (5 / 7.5 / 10 s)."""
    if name == "lmsys":
        return lmsys_like(num_sessions, rate, seed=seed)
    if name == "sharegpt":
        return sharegpt_like(num_sessions, rate, seed=seed)
    if name == "swebench":
        return swebench_like(num_sessions, rate, response_time_mean_s=response_time_s, seed=seed)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(SESSION_WORKLOADS)}")


def with_outputs(workload: Workload, seed: int, vocab_size: int = 32000) -> Workload:
    """``workload`` with every request's missing ``output_token_ids`` filled by fresh random
    tokens (seeded by ``seed`` and the request's position), and missing prompt ids expanded
    from its block hashes."""
    out = []
    for i, r in enumerate(workload.requests):
        changes = {}
        if r.prompt_token_ids is None:
            if r.block_hashes is None:
                raise ValueError(
                    f"request {r.request_id!r} has neither prompt token ids nor "
                    "block hashes: a prefix cache cannot replay it"
                )
            changes["prompt_token_ids"] = expand_block_tokens(
                r.block_hashes, r.prompt_len, block_size=r.block_size, vocab_size=vocab_size
            )
        if r.output_token_ids is None:
            rng = np.random.default_rng([seed, i])
            changes["output_token_ids"] = rng.integers(4, vocab_size, size=r.output_len).tolist()
        out.append(replace(r, **changes) if changes else r)
    return Workload(workload.name, out, list(workload.sources), dict(workload.params))


@lru_cache(maxsize=2)
def trace_workload(path: str, limit: int | None, seed: int) -> Workload:
    """A trace file (Marconi JSONL, Mooncake JSONL or ours, detected) ready to replay; prompts
    longer than Marconi's 32K cap are dropped, as the authors' traces exclude them.

    ``params`` gains ``format``, ``read`` (requests read, at most ``limit``) and
    ``dropped_over_cap`` (of those, requests over the cap), so reports can say what was replayed.
    """
    p = Path(path)
    wl = load_trace(p, limit=limit)
    kept = [r for r in wl.requests if r.prompt_len + r.output_len <= MAX_CONTEXT]
    params = {
        **wl.params,
        "format": detect_format(p),
        "read": len(wl.requests),
        "dropped_over_cap": len(wl.requests) - len(kept),
    }
    return with_outputs(Workload(wl.name, kept, list(wl.sources), params), seed)


def stream_stats(workload: Workload) -> dict[str, int]:
    """What a replayed stream is: sessions (distinct session ids, 0 when requests carry none),
    requests read from the source (all of them for generated sessions), requests dropped over
    the 32K cap (0 for generated sessions, which respect it), and prompt + output tokens
    replayed."""
    reqs = workload.requests
    return {
        "stream_sessions": len({r.session_id for r in reqs if r.session_id is not None}),
        "stream_read": int(workload.params.get("read", len(reqs))),
        "stream_dropped": int(workload.params.get("dropped_over_cap", 0)),
        "stream_tokens": sum(r.prompt_len + r.output_len for r in reqs),
    }


def check_trace(path: Path) -> None:
    """Fail early, naming the file (and line), when ``--trace`` cannot be replayed."""
    fmt = detect_format(path)
    if fmt not in ("marconi", "mooncake", "servelab"):
        raise ValueError(
            f"{path}: a {fmt} trace has no token ids or block hashes; Marconi "
            "needs the Marconi JSONL, Mooncake JSONL or Servelab JSONL format"
        )
    wl = load_trace(path, limit=50)  # parses (and checks) the head; errors name file:line
    if not wl.requests:
        raise ValueError(f"{path}: the trace has no requests")
