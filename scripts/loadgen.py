"""Replay a request trace against any OpenAI-compatible server and report TTFT/TPOT/E2E.

``python -m scripts.loadgen --url http://127.0.0.1:8000 --model tiny-llama-125m
--trace azure-conv --limit 100 --time-scale 0.5``

Each trace request becomes one streamed ``POST /v1/completions`` sent at its arrival time (open
loop: a slow server does not slow the arrivals down) with a token-id prompt of the trace's
length (the trace's own ids when it has them, e.g. Mooncake with ``--expand-tokens``; else
random ids drawn from ``--seed``) and ``max_tokens`` = the trace's output length, greedy, with
vLLM's ``ignore_eos`` so every request generates its full length (``--no-ignore-eos`` for
servers that reject the field). Servers that accept token-id prompts: ours, vLLM, SGLang.

Timing: a request arrives when it is sent; each streamed token is stamped when its chunk
arrives (a chunk's ``token_ids``, our and vLLM's extension, say how many tokens it carries;
without them one chunk with text counts as one token); it finishes when the stream ends. The
records go through :mod:`core.metrics`, so the percentiles are defined as everywhere else in
Servelab. A request that fails (an HTTP error, an error event, a dropped connection) is counted
with finish reason ``error`` and left out of latency statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import RequestRecord, summarize
from core.workload import Workload

__all__ = ["LoadRequest", "build_requests", "load_workload", "main", "replay", "summary_table"]

TRACES = ("azure-code", "azure-conv", "mooncake")


@dataclass(frozen=True)
class LoadRequest:
    """One request to send: at ``arrival`` seconds after the start, ``prompt`` token ids,
    exactly ``max_tokens`` output tokens."""

    request_id: str
    arrival: float
    prompt: list[int]
    max_tokens: int


def load_workload(trace: str, limit: int | None, expand_tokens: bool = False) -> Workload:
    """A shipped trace by name (``azure-code``, ``azure-conv``, ``mooncake``) or any trace file
    :func:`core.workload.load_trace` reads."""
    from core.workload import load_azure, load_mooncake, load_trace

    if trace in ("azure-code", "azure-conv"):
        return load_azure(kind="code" if trace == "azure-code" else "conv", limit=limit)
    if trace == "mooncake":
        return load_mooncake(limit=limit, expand_tokens=expand_tokens)
    if not Path(trace).exists():
        raise ValueError(f"--trace {trace!r}: not a shipped trace ({', '.join(TRACES)}) nor a file")
    return load_trace(trace, limit=limit)


def build_requests(
    workload: Workload,
    *,
    vocab_size: int = 32000,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    rate: float | None = None,
    time_scale: float = 1.0,
    seed: int = 0,
) -> list[LoadRequest]:
    """The trace's requests as :class:`LoadRequest` in arrival order: lengths capped by
    ``max_*_len``, arrival times multiplied by ``time_scale`` or, with ``rate``, replaced by a
    Poisson stream of ``rate`` requests/s (seeded)."""
    from core.workload.arrivals import poisson_arrivals

    reqs = sorted(workload.requests, key=lambda r: r.arrival_time)
    if not reqs:
        raise ValueError(f"workload {workload.name!r} has no requests")
    rng = np.random.default_rng(seed)
    arrivals = (
        poisson_arrivals(len(reqs), rate, seed)
        if rate is not None
        else np.array([r.arrival_time for r in reqs]) * time_scale
    )
    t0 = float(arrivals[0]) if rate is None else 0.0
    out = []
    for r, at in zip(reqs, arrivals, strict=True):
        n_prompt = min(r.prompt_len, max_prompt_len or r.prompt_len)
        n_out = max(1, min(r.output_len, max_output_len or r.output_len))
        if r.prompt_token_ids is not None:
            prompt = [int(t) % vocab_size for t in r.prompt_token_ids[:n_prompt]]
        else:  # ids from 10 up: clear of the special tokens most vocabularies start with
            prompt = rng.integers(10, vocab_size, size=max(1, n_prompt)).tolist()
        out.append(LoadRequest(r.request_id, float(at) - t0, prompt, n_out))
    return out


@dataclass
class _Timing:
    sent: float
    tokens: list[float]
    finish: float | None = None
    usage_tokens: int | None = None
    error: str | None = None
    finish_reason: str | None = None


async def _one(client: Any, url: str, body: dict[str, Any], headers: dict[str, str]) -> _Timing:
    timing = _Timing(time.perf_counter(), [])
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                timing.error = f"HTTP {resp.status_code}: {text[:200]}"
                return timing
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    timing.error = str(chunk["error"].get("message", chunk["error"]))
                    return timing
                if chunk.get("usage"):
                    timing.usage_tokens = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", []):
                    ids = choice.get("token_ids")
                    n = len(ids) if ids is not None else int(bool(choice.get("text")))
                    timing.tokens += [now] * n
                    if choice.get("finish_reason"):
                        timing.finish_reason = choice["finish_reason"]
            timing.finish = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request
        timing.error = f"{type(exc).__name__}: {exc}"
    return timing


def _record(req: LoadRequest, t: _Timing, t0: float) -> RequestRecord:
    arrival = t.sent - t0
    if t.error is not None or t.finish is None:
        return RequestRecord(req.request_id, arrival, finish=arrival, finish_reason="error",
                             prompt_tokens=len(req.prompt))  # fmt: skip
    times = [x - t0 for x in t.tokens]
    n = t.usage_tokens if t.usage_tokens is not None else len(times)
    return RequestRecord(
        req.request_id,
        arrival,
        first_token=times[0] if times else None,
        finish=max(t.finish - t0, times[-1] if times else arrival),
        token_times=tuple(times) if len(times) == n else (),
        prompt_tokens=len(req.prompt),
        output_tokens=n,
        finish_reason=t.finish_reason or "length",
    )


async def replay(
    url: str,
    model: str,
    requests: Sequence[LoadRequest],
    *,
    api_key: str | None = None,
    ignore_eos: bool = True,
    timeout_s: float = 3600.0,
) -> tuple[list[RequestRecord], float]:
    """Send ``requests`` on time to ``url`` (the server's base URL); their records (seconds
    since the start) and the wall-clock seconds from the first send to the last finish."""
    import httpx

    endpoint = url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()

        async def send(req: LoadRequest) -> _Timing:
            await asyncio.sleep(max(0.0, t0 + req.arrival - time.perf_counter()))
            body: dict[str, Any] = {
                "model": model,
                "prompt": req.prompt,
                "max_tokens": req.max_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if ignore_eos:
                body["ignore_eos"] = True
            return await _one(client, endpoint, body, headers)

        timings = await asyncio.gather(*(send(r) for r in requests))
    records = [_record(r, t, t0) for r, t in zip(requests, timings, strict=True)]
    ends = [r.finish for r in records if r.finish is not None]
    return records, max(ends, default=0.0) - min(r.arrival for r in records)


SUMMARY_ROWS = ("ttft", "tpot", "e2e")


def summary_table(summary: dict[str, Any], title: str) -> str:
    """The summary's request counts, throughput and TTFT/TPOT/E2E percentiles (ms)."""
    head = (
        f"{title}: {summary['num_completed']}/{summary['num_requests']} completed "
        f"({summary['num_error']} failed) in {summary['duration']:.2f} s; "
        f"{summary['request_throughput']:.2f} req/s, {summary['output_throughput']:.1f} output tok/s"
    )
    lines = [head, f"{'metric':<6} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9}  (ms)"]
    for m in SUMMARY_ROWS:
        vals = [summary.get(f"{m}_{s}", float("nan")) * 1e3 for s in ("mean", "p50", "p90", "p99")]
        lines.append(f"{m:<6} " + " ".join(f"{v:9.1f}" for v in vals))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.loadgen",
        description="Replay a trace against an OpenAI-compatible server; TTFT/TPOT/E2E percentiles.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--model", required=True, help="the model name the server expects")
    p.add_argument("--api-key", default=None)
    p.add_argument("--trace", default="azure-conv", help=f"{', '.join(TRACES)} or a trace file")
    p.add_argument("--limit", type=int, default=100, help="first N requests (default 100)")
    p.add_argument(
        "--expand-tokens", action="store_true", help="Mooncake: send the trace's block tokens"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="Poisson arrivals at this rate (req/s) instead of the trace's",
    )
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply the trace's arrival times"
    )
    p.add_argument("--max-prompt-len", type=int, default=None, help="cap prompt lengths")
    p.add_argument("--max-output-len", type=int, default=None, help="cap output lengths")
    p.add_argument("--vocab-size", type=int, default=32000, help="range of random prompt ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="do not send vLLM's ignore_eos",
    )
    p.add_argument(
        "--out", default=None, help="write the summary and per-request records to this JSON file"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workload = load_workload(args.trace, args.limit, args.expand_tokens)
    except (ValueError, FileNotFoundError) as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    requests = build_requests(
        workload,
        vocab_size=args.vocab_size,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
        rate=args.rate,
        time_scale=args.time_scale,
        seed=args.seed,
    )
    records, duration = asyncio.run(
        replay(args.url, args.model, requests, api_key=args.api_key, ignore_eos=args.ignore_eos)
    )
    summary = summarize(records, duration=duration)
    print(summary_table(summary, f"{workload.name} -> {args.url}"))
    if args.out:
        from dataclasses import asdict

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        data = {"summary": summary, "records": [asdict(r) for r in records]}
        Path(args.out).write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if summary["num_error"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
