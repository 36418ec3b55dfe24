"""The HTTP server's overhead: ``servelab serve`` + the load client vs the engine in-process.

``python -m scripts.bench serve [--quick] [--out results/bench] [--requests N] [--rounds R]``

Model: the ``tiny-llama-125m`` preset with random weights (seed 0), fp32, at most 8 sequences
per batch (so 24 requests run in waves and the steady state counts), prefix caching off
(repeated rounds would otherwise hit the cache), the same engine options everywhere.
Workload: the first N requests of the shipped Azure conversation trace, lengths capped for a
CPU, random prompt ids (seeded), greedy with EOS ignored, so every system generates exactly the
trace's output lengths.

Systems on the same requests, their order rotating from round to round; every engine steps on
a thread of its own, as the server's does (see :func:`_in_thread`):

- offline: at saturation ``LLM.generate`` on all requests at once; at a rate, the engine's
  own timed replay (:func:`core.engine.serve.replay`) with the same Poisson arrivals;
- engine-loop (saturation only): the server's :class:`~core.serve.engine.AsyncEngine` on the
  same ``LLM`` in this process, fed from asyncio: the serving loop without HTTP;
- server: ``python -m core.serve`` in a subprocess on loopback (idle while the others run),
  driven by :mod:`scripts.loadgen` (streamed ``/v1/completions``, one connection per request).

Reported: per point and system, throughput and TTFT/TPOT/E2E percentiles (median over rounds);
the server's overhead at saturation, ``makespan_server / makespan_offline - 1`` per round and
its median over six rounds (target < 10%), and the engine loop's the same way; rate points run
once. Rates are fractions of the offline saturation throughput (requests/s) of the first round.
For the server, the share of its makespan its engine spent stepping (from ``/metrics``) tells
time outside the steps (HTTP, streaming, the driver loop) from slower steps (cores shared with
the event loop and the client).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from core.metrics import RequestRecord, summarize
from scripts.bench import report as rep
from scripts.loadgen import LoadRequest, build_requests, load_workload, replay

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama-125m"


@dataclass(frozen=True)
class Scale:
    name: str
    requests: int
    max_prompt_len: int
    max_output_len: int
    load_fractions: tuple[float, ...]
    rounds: int
    rate_rounds: int
    max_num_seqs: int = 8
    kv_cache_memory: int = 256 * 2**20


FULL = Scale("default", 24, 64, 32, (0.5, 0.9), rounds=6, rate_rounds=1)
QUICK = Scale("quick", 4, 16, 4, (0.5,), rounds=1, rate_rounds=1)


class Server:
    """``python -m core.serve`` in a subprocess on 127.0.0.1, any free port."""

    def __init__(self, scale: Scale, threads: int) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="servelab-bench-serve-", suffix=".log")
        cmd = [
            sys.executable, "-m", "core.serve", MODEL, "--port", "0", "--threads", str(threads),
            "--max-num-seqs", str(scale.max_num_seqs), "--kv-cache-memory", str(scale.kv_cache_memory),
            "--no-enable-prefix-caching", "--max-queue", "100000", "--log-level", "warning",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env, cwd=ROOT)
        self.url = self._wait_for_url(600.0)

    def _wait_for_url(self, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            m = re.search(r"serving .* on (http://\S+)", Path(self.log.name).read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("the server did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _offline(
    llm: Any, reqs: Sequence[LoadRequest], rate: float | None
) -> tuple[list[RequestRecord], float]:
    """System A: all at once through ``LLM.generate`` (rate None) or the engine's timed replay."""
    from core.engine import SamplingParams
    from core.engine.serve import replay as engine_replay
    from core.workload.schema import Request

    if rate is None:
        params = [
            SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True) for r in reqs
        ]
        t0 = time.perf_counter()
        outs = llm.generate([r.prompt for r in reqs], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        return [RequestRecord.from_output(o) for o in outs], wall
    work = [
        Request(
            r.request_id, r.arrival, len(r.prompt), r.max_tokens, prompt_token_ids=list(r.prompt)
        )
        for r in reqs
    ]
    t0 = time.perf_counter()
    done = engine_replay(llm.engine, work)
    wall = time.perf_counter() - t0
    for er in done:
        llm.engine.drop(er.request_id)
    return [RequestRecord.from_request(er) for er in done], wall


async def _engine_loop(llm: Any, reqs: Sequence[LoadRequest]) -> list[RequestRecord]:
    """System A': the server's engine loop (:class:`~core.serve.engine.AsyncEngine`, its driver
    thread stepping ``llm``) fed from asyncio in this process, without HTTP or a client; each
    token stamped when its update reaches the coroutine, as the load client stamps chunks."""
    from core.engine import SamplingParams
    from core.serve.engine import AsyncEngine, Worker

    engine = AsyncEngine([Worker(0, llm)], max_outstanding=len(reqs))
    engine.start()
    t0 = time.perf_counter()

    async def one(i: int, r: LoadRequest) -> RequestRecord:
        sent = time.perf_counter() - t0
        sp = SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True)
        times: list[float] = []
        reason = None
        async for u in engine.submit(f"loop-{i}", r.prompt, sp):
            times += [time.perf_counter() - t0] * len(u.token_ids)
            reason = u.finish_reason
        end = times[-1] if times else sent
        return RequestRecord(r.request_id, sent, times[0] if times else None, end, tuple(times),
                             prompt_tokens=len(r.prompt), output_tokens=len(times),
                             finish_reason=reason)  # fmt: skip

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs))))
    finally:
        await engine.shutdown(0.0)


def _in_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a fresh thread, as the server steps its engine on its driver thread.

    Measured here under load: the same ``LLM.generate`` took 6-8 s on the main thread with two
    torch threads and ~1 s on a second thread (and ~1 s on either with one torch thread), so A
    and B must run their engines on the same kind of thread to be compared."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            errors.append(exc)

    t = threading.Thread(target=target, name="bench-offline")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _engine_counters(url: str) -> tuple[float, float]:
    """The server's engine steps and busy seconds so far, from ``/metrics``."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = dict(
        line.split(" ", 1) for line in text.splitlines() if line.startswith("servelab_engine_")
    )
    return float(values["servelab_engine_steps"]), float(values["servelab_engine_busy_seconds"])


def _makespan(records: Sequence[RequestRecord]) -> float:
    ends = [r.finish for r in records if r.finish is not None]
    return max(ends) - min(r.arrival for r in records)


SYSTEMS = ("offline", "engine-loop", "server")
KEYS = ("request_throughput", "output_throughput", "num_completed", "num_error")
STATS = (
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p90",
    "e2e_p50",
    "e2e_p90",
    "e2e_p99",
)


def _point(records: Sequence[RequestRecord]) -> dict[str, Any]:
    s = summarize(records)
    return {"makespan_s": _makespan(records), **{k: s[k] for k in (*KEYS, *STATS)}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core.engine import LLM
    from core.model.presets import preset_config

    started = time.perf_counter()
    scale = QUICK if args.quick else FULL
    if args.requests:
        scale = Scale(**{**asdict(scale), "requests": args.requests})
    if args.rounds:
        scale = Scale(**{**asdict(scale), "rounds": args.rounds})
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    out_path = Path(args.out) / "serve.json"
    prov = rep.provenance()
    wl = load_workload("azure-conv", scale.requests)
    config = {
        "scale": asdict(scale),
        "model": {"preset": MODEL, "weights": "random, seed 0", "dtype": "float32"},
        "workload": f"first {scale.requests} requests of azure-conv, prompts <= "
        f"{scale.max_prompt_len}, outputs <= {scale.max_output_len} tokens, random ids (seed 0)",
        "threads": threads,
        "seed": 0,
    }
    engine_kw = dict(
        max_num_seqs=scale.max_num_seqs,
        kv_cache_memory=scale.kv_cache_memory,
        enable_prefix_caching=False,
        seed=0,
    )
    results: dict[str, Any] = {"rounds": []}

    def write() -> dict[str, Any]:
        report = rep.make_report(
            "serve", config, results, make_targets(results), prov, time.perf_counter() - started
        )
        rep.write_json(out_path, report)
        return report

    llm = LLM(preset_config(MODEL), **engine_kw)
    server = Server(scale, threads)
    try:
        sat = build_requests(wl, vocab_size=32000, max_prompt_len=scale.max_prompt_len,
                             max_output_len=scale.max_output_len, rate=1e9)  # fmt: skip
        _in_thread(
            _offline, llm, sat[:2], None
        )  # warm-up both sides (first forward passes are slower)
        asyncio.run(replay(server.url, MODEL, sat[:2]))
        rates: list[float] = []
        for rnd in range(scale.rounds):
            row: dict[str, Any] = {}
            points = ["saturation"]
            if rnd < scale.rate_rounds:
                points += [f"rate-{f:g}" for f in scale.load_fractions]
            for i, name in enumerate(points):
                if name == "saturation":
                    reqs, rate = sat, None
                else:
                    rate = rates[i - 1]
                    reqs = build_requests(wl, vocab_size=32000, max_prompt_len=scale.max_prompt_len,
                                          max_output_len=scale.max_output_len, rate=rate, seed=rnd)  # fmt: skip
                systems = SYSTEMS if rate is None else ("offline", "server")
                k = (rnd + i) % len(systems)  # the order rotates from round to round
                order = systems[k:] + systems[:k]
                row[name] = {"rate": rate, "order": list(order)}
                for system in order:
                    if system == "offline":
                        recs, _ = _in_thread(_offline, llm, reqs, rate)
                    elif system == "engine-loop":
                        recs = asyncio.run(_engine_loop(llm, reqs))
                    else:
                        before = _engine_counters(server.url)
                        recs, _ = asyncio.run(replay(server.url, MODEL, reqs))
                        after = _engine_counters(server.url)
                    row[name][system] = _point(recs)
                    if system == "server":  # how much of the makespan the engine was stepping
                        busy = after[1] - before[1]
                        row[name][system].update(
                            engine_steps=after[0] - before[0],
                            engine_busy_s=busy,
                            engine_busy_share=busy / row[name][system]["makespan_s"],
                        )
                    print(
                        f"round {rnd} {name} {system}: {row[name][system]['makespan_s']:.2f} s",
                        file=sys.stderr,
                    )
                if name == "saturation" and not rates:
                    rps = row[name]["offline"]["request_throughput"]
                    rates = [f * rps for f in scale.load_fractions]
            results["rounds"].append(row)
            write()
    finally:
        server.close()
    results["summary"] = summarize_rounds(results["rounds"])
    return write()


def summarize_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per point and system, the median of each number over the rounds that ran the point;
    per round and as the median: the server's makespan over the offline one, minus 1
    (``makespan_overhead``), and the same for the engine loop alone (``loop_overhead``)."""
    out: dict[str, Any] = {}
    for name in rounds[0]:
        ran = [r[name] for r in rounds if name in r]
        entry: dict[str, Any] = {"rate": ran[0]["rate"], "rounds": len(ran)}
        for system in (s for s in SYSTEMS if s in ran[0]):
            entry[system] = {k: median(p[system][k] for p in ran) for k in ran[0][system]}
        for key, system in (("makespan_overhead", "server"), ("loop_overhead", "engine-loop")):
            if system in ran[0]:
                per_round = [p[system]["makespan_s"] / p["offline"]["makespan_s"] - 1 for p in ran]
                entry[f"{key}_per_round"] = per_round
                entry[key] = median(per_round)
        out[name] = entry
    return out


def make_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    sat = results.get("summary", {}).get("saturation")
    measured = None if sat is None else 100.0 * sat["makespan_overhead"]
    return [
        rep.target(
            "server-overhead-saturation",
            "HTTP server + load client vs LLM.generate on the same requests, all sent at once: "
            "median over rounds of makespan_server / makespan_offline - 1",
            measured,
            "<",
            10.0,
            "%",
            reason=None if sat is not None else "the run did not finish",
        )
    ]


def render(report: dict[str, Any]) -> str:
    summary = report["results"].get("summary", {})
    rows = []
    for name, e in summary.items():
        for system in (s for s in SYSTEMS if s in e):
            p, server = e[system], system == "server"
            latencies = (
                1e3 * p[k] for k in ("ttft_p50", "ttft_p90", "tpot_p50", "e2e_p50", "e2e_p90")
            )
            rows.append([
                name, system, e["rate"], e["rounds"], p["makespan_s"], p["output_throughput"],
                *latencies,
                100 * p["engine_busy_share"] if server else None,
                100 * e["makespan_overhead"] if server else
                100 * e["loop_overhead"] if system == "engine-loop" else None,
            ])  # fmt: skip
    headers = ["point", "system", "req/s", "rounds", "makespan s", "out tok/s", "TTFT p50",
               "TTFT p90", "TPOT p50", "E2E p50", "E2E p90", "busy %", "overhead %"]  # fmt: skip
    table = rep.format_table(
        headers,
        rows,
        title="Server vs offline engine (latencies in ms, medians over rounds; busy %: the "
        "server engine's stepping time / makespan)",
        formats=[
            None,
            None,
            ".2f",
            None,
            ".2f",
            ".1f",
            ".0f",
            ".0f",
            ".1f",
            ".0f",
            ".0f",
            ".0f",
            "+.1f",
        ],
    )
    return table + "\n\n" + rep.targets_table(report["targets"])


def build_parser(prog: str = "python -m scripts.bench serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 short requests, one rate, one round")
    p.add_argument("--requests", type=int, default=None, help="requests per point (default 24)")
    p.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds at saturation (default 6)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads on each side")
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report))
    print(f"\nwrote {Path(args.out) / 'serve.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
