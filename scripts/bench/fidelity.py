"""``python -m scripts.bench fidelity``: the simulator against the real engine, on this machine.

The same request stream is served twice per load level: by the real engine in wall-clock time
(:func:`core.engine.replay`, one replica, a random-initialized model) and by the simulator
(:class:`core.sim.Simulator`, the same scheduler, block size, KV blocks, token budget, sequence
limit and prefix-caching setting) with the :class:`core.sim.profiled.ProfiledCostModel`
calibrated for that engine on this machine. :func:`core.metrics.compare` gives the signed
relative error of the simulator's mean and p90 TTFT, TPOT and end-to-end latency against the
engine's; the issue's target is ``|error| <= 5%`` for every one.

Workload
--------
``--requests`` (200) rows drawn at random (seeded) from the Azure LLM inference trace 2023,
conversation part. Its lengths are for a 7B-70B model with a context of thousands of tokens;
for the tiny model both the prompt and the output length are divided by ``--length-scale`` (8)
and rounded (at least 1 token), which keeps the trace's shape (the prompt/output ratio, the
spread, the long tail) while the median prompt becomes 128 tokens (p99 ~520) and the median
output 16, so every request fits the model's 2,048-token context (a prompt is cut if prompt +
output would not) and a 2-core CPU serves several requests a second. Prompts are random token
ids (seeded), the same ids in both worlds; outputs are greedy with EOS ignored, so each
request generates exactly its output length in both.

Load levels
-----------
The capacity is measured, not assumed: all requests are first served at once (every arrival at
0) by the real engine; capacity = requests / makespan, the engine's saturated throughput on
this workload (the simulator serves the same offline run: its error is reported too, without a
target). The Poisson arrival rates are ``--loads`` (0.3, 0.6, 0.9) of that capacity: a lightly
loaded server (requests rarely overlap: the cost of small steps), a busy one, and one near
saturation (large mixed batches and queueing, where errors in step time compound). Each level
has its own arrival seed.

What else the report holds
--------------------------
Per load, beside the errors: every engine step's composition and wall time during the replay,
with the profiled model's prediction for it (bias and mean absolute error of step time, by
kind of step, and on the steps during which the engine had its core); the engine's time
between steps that the simulator does not model (replay loop and arrival handling) and the
time ``Scheduler.update`` takes after a step's tokens are stamped (the simulator stamps them
at the end of the step); the process's CPU share of the engine's step time (below 1 with one
thread: the engine waited for a core, i.e. other work shared the machine, which no calibration
can predict); and a *probe* just before the run: a few reference steps measured against the
profile (``ratio`` away from 1: the machine runs at another speed than during the
calibration, e.g. because other work competes for memory bandwidth). These say where an error
comes from.

Options: ``--profile PATH`` (default: ``data/profiles/<this device>-tiny-llama-20m.json`` if it
exists, else the shipped profile, with a warning when it was made on another machine);
``--calibrate`` (calibrate first, in this process: recommended, timings drift between machines
and days; the profile is written to ``<out>/fidelity-profile.json``); ``--no-repeat`` (skip the
second engine run of each load, which measures how far two runs of the engine on the same
stream differ: the floor no simulator can beat, mostly in the p90 of TTFT, where a step boundary
more or less moves a request's first token by a whole step); ``--requests``,
``--loads``, ``--length-scale``, ``--threads`` (default: the profile's), ``--seed``, ``--out``,
``--quick`` (tests: the smoke model, a tiny calibration, few requests).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report as rep

BENCHMARK = "fidelity"
DEFAULT_OUT = Path("results") / "bench"
SHIPPED_PROFILE = Path("profiles") / "cpu-amd-epyc-1t-tiny-llama-20m.json"  # under data/
DEFAULT_LOADS = (0.3, 0.6, 0.9)
LENGTH_SCALE = 8
TARGET = 0.05
METRICS, STATS = ("ttft", "tpot", "e2e"), ("mean", "p90")
FIRST_TOKEN_ID = 3
WARMUP_REQUESTS = 8
QUIET_CPU_SHARE = 0.9  # as scripts.calibrate.measure.DISTURBED_CPU_SHARE


def _loads(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not vals or any(not (0 < v < 1.5) for v in vals):
        raise argparse.ArgumentTypeError(
            f"loads are fractions of capacity in (0, 1.5), got {text!r}"
        )
    return vals


def build_parser(prog: str = "python -m scripts.bench fidelity") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Simulator fidelity: Azure conversation requests (lengths scaled to a tiny model) at "
            "Poisson loads of 30/60/90%% of the measured capacity, through the real engine on "
            "this machine and through the simulator with the profiled cost model. Writes "
            f"<out>/{BENCHMARK}.json with the relative errors of mean and p90 TTFT, TPOT and "
            "end-to-end latency (target: every |error| <= 5%%)."
        ),
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="step profile (default: this device's under data/profiles/, else the "
        f"shipped data/{SHIPPED_PROFILE})",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate first in this process (recommended; ~2-3 min) and use that "
        f"profile, written to <out>/{BENCHMARK}-profile.json",
    )
    p.add_argument(
        "--model", default=None, help="with --calibrate: the model (default tiny-llama-20m)"
    )
    p.add_argument(
        "--requests",
        type=rep.positive_int,
        default=200,
        help="requests drawn from the trace (default 200)",
    )
    p.add_argument(
        "--loads",
        type=_loads,
        default=DEFAULT_LOADS,
        help="arrival rates as fractions of the measured capacity (default 0.3,0.6,0.9)",
    )
    p.add_argument(
        "--length-scale",
        type=rep.positive_int,
        default=LENGTH_SCALE,
        help=f"divide the trace's prompt and output lengths by this (default {LENGTH_SCALE})",
    )
    p.add_argument(
        "--threads",
        type=rep.positive_int,
        default=None,
        help="torch threads (default: the profile's; must match it to be calibrated)",
    )
    p.add_argument("--seed", type=int, default=0, help="requests, prompts and arrivals (default 0)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)"
    )
    p.add_argument(
        "--no-repeat",
        dest="repeat",
        action="store_false",
        help="skip the second engine run of each load (the run-to-run noise floor)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="at most 8 requests and one load; without --profile, first a tiny "
        "calibration of tiny-llama-smoke: seconds; for tests, not for numbers",
    )
    return p


# ---- profile -----------------------------------------------------------------------------------


def _this_device_profile() -> Path | None:
    import torch

    from scripts.calibrate import DEFAULT_MODEL, default_profile_path, device_info

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = default_profile_path(
        device_info(dev, 1 if dev == "cpu" else torch.get_num_threads()), DEFAULT_MODEL
    )
    return path if path.is_file() else None


def machine_mismatch(profile: dict[str, Any], threads: int) -> list[str]:
    """How this machine differs from the one the profile was calibrated on (empty if it looks
    the same): device type and name, CPU capability, threads, torch version, host name."""
    import torch

    from scripts.calibrate import device_info

    p_dev = profile.get("device") or {}
    dev_type = str(p_dev.get("type", "cpu"))
    if dev_type != "cpu" and not torch.cuda.is_available():
        dev_type = "cpu"
    here = device_info(dev_type, threads)
    out = []
    for key in ("type", "name", "cpu_capability", "hostname"):
        if p_dev.get(key) != here.get(key):
            out.append(f"{key}: profile {p_dev.get(key)!r}, here {here.get(key)!r}")
    if profile.get("threads") != threads:
        out.append(f"threads: profile {profile.get('threads')}, here {threads}")
    if profile.get("torch_version") != torch.__version__:
        out.append(f"torch: profile {profile.get('torch_version')}, here {torch.__version__}")
    return out


def _cost_model(args: argparse.Namespace, out_dir: Path) -> tuple[Any, Path, bool]:
    """The profiled cost model to use, where it is, and whether it was calibrated just now."""
    from core.data import DATA_DIR
    from core.sim.profiled import ProfiledCostModel, write_profile

    if args.calibrate or (args.quick and args.profile is None):
        from scripts.calibrate import DEFAULT_GRID, DEFAULT_MODEL, QUICK_GRID, calibrate

        model = args.model or ("tiny-llama-smoke" if args.quick else DEFAULT_MODEL)
        threads = args.threads if args.threads is not None else 1
        profile = calibrate(
            model,
            grid=QUICK_GRID if args.quick else DEFAULT_GRID,
            threads=threads,
            seed=args.seed,
            device="cpu" if args.quick else None,
        )
        path = out_dir / f"{BENCHMARK}-profile.json"
        write_profile(profile, path)
        return ProfiledCostModel.load(path), path, True
    path = args.profile or _this_device_profile() or Path(DATA_DIR) / SHIPPED_PROFILE
    return ProfiledCostModel.load(path), Path(path), False


# ---- workload ----------------------------------------------------------------------------------


def make_workload(
    n: int, scale: int, max_model_len: int, vocab: int, seed: int
) -> tuple[list[Any], dict[str, Any]]:
    """``n`` requests drawn (seeded, without replacement) from the Azure conversation trace,
    lengths divided by ``scale`` (rounded, at least 1), prompts cut so prompt + output fits
    ``max_model_len``; random prompt token ids. Arrivals are all 0 (set per load later)."""
    import numpy as np

    from core.workload import Request, azure_trace_path, load_azure

    trace = load_azure(kind="conv")
    if n > len(trace):
        raise ValueError(f"--requests {n}: the trace has only {len(trace)} requests")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(trace), size=n, replace=False))
    reqs, cut = [], 0
    for row in rng.permutation(rows):  # the order requests take the sorted arrival times
        src = trace.requests[int(row)]
        out = max(1, round(src.output_len / scale))
        prompt = max(1, round(src.prompt_len / scale))
        if prompt + out > max_model_len - 1:
            prompt, cut = max(1, max_model_len - 1 - out), cut + 1
        ids = rng.integers(FIRST_TOKEN_ID, vocab, size=prompt).tolist()
        reqs.append(Request(f"azure-conv-{int(row)}", 0.0, prompt, out, prompt_token_ids=ids))
    p = [r.prompt_len for r in reqs]
    o = [r.output_len for r in reqs]
    info = {
        "trace": str(azure_trace_path("conv")),
        "kind": "conv",
        "rows": sorted(int(r) for r in rows),
        "length_scale": scale,
        "prompts_cut_to_fit": cut,
        "prompt_len": {
            "mean": statistics.fmean(p),
            "p50": float(np.percentile(p, 50)),
            "p90": float(np.percentile(p, 90)),
            "max": max(p),
        },
        "output_len": {
            "mean": statistics.fmean(o),
            "p50": float(np.percentile(o, 50)),
            "p90": float(np.percentile(o, 90)),
            "max": max(o),
        },
    }
    return reqs, info


def with_arrivals(reqs: Sequence[Any], times: Sequence[float]) -> list[Any]:
    from dataclasses import replace

    return [replace(r, arrival_time=float(t)) for r, t in zip(reqs, times, strict=True)]


# ---- the two worlds ----------------------------------------------------------------------------


class StepLog:
    """Records every engine step while installed: start, wall and CPU seconds, and the prefill
    chunks and decode contexts the scheduler ran (read from the runner's input); and the time
    ``Scheduler.update`` takes after the step's tokens are stamped (the simulator stamps them
    at the end of the step, so this is how much later its token times are)."""

    def __init__(self, engine: Any) -> None:
        from core.sim.cost import chunks_of

        self.engine = engine
        self.steps: list[tuple[float, float, float, list[tuple[int, int]], list[int]]] = []
        self.update_s: list[float] = []
        self._out: Any = None
        runner, sched = engine.runner, engine.scheduler
        execute, step, update = runner.execute, engine.step, sched.update

        def recording_execute(out: Any) -> Any:
            self._out = out
            return execute(out)

        def timed_update(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return update(*a, **k)
            finally:
                self.update_s.append(time.perf_counter() - t0)

        sched.update = timed_update

        def timed_step() -> Any:
            self._out = None
            c0, t0 = time.process_time(), time.perf_counter()
            done = step()
            t1, c1 = time.perf_counter(), time.process_time()
            if self._out is not None:
                pre, dec = chunks_of(self._out)
                self.steps.append((t0, t1 - t0, c1 - c0, pre, dec))
            return done

        runner.execute = recording_execute
        engine.step = timed_step

    def clear(self) -> None:
        self.steps.clear()
        self.update_s.clear()


def _kind(pre: list[Any], dec: list[int]) -> str:
    if pre and dec:
        return "mixed"
    return "prefill" if pre else "decode"


def step_diagnostics(log: StepLog, cost: Any) -> dict[str, Any]:
    """The profiled model against every engine step of a replay: total predicted over total
    measured step time (bias), mean absolute relative error, per kind of step; the engine's
    time between back-to-back steps (not simulated); its CPU share of the step time."""
    steps = log.steps
    if not steps:
        return {"steps": 0}
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for _, dt, _, pre, dec in steps:
        by_kind.setdefault(_kind(pre, dec), []).append((dt, cost.step_time(pre, dec)))
    wall = sum(s[1] for s in steps)
    gaps = [b[0] - (a[0] + a[1]) for a, b in zip(steps, steps[1:], strict=False)]
    busy_gaps = [g for g in gaps if g < 1e-3]  # longer ones are the replay waiting for arrivals

    def summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
        m, p = sum(x for x, _ in pairs), sum(y for _, y in pairs)
        return {
            "steps": len(pairs),
            "measured_s": m,
            "predicted_s": p,
            "bias": p / m - 1 if m else None,
            "mean_abs_rel_error": statistics.fmean(abs(y - x) / x for x, y in pairs if x > 0),
        }

    out = summary([pair for pairs in by_kind.values() for pair in pairs])
    out["by_kind"] = {k: summary(v) for k, v in sorted(by_kind.items())}
    # steps during which the process had its core (one thread: CPU time ~ wall time): the
    # model's own accuracy, free of other work on the machine
    quiet = [
        (dt, cost.step_time(pre, dec))
        for _, dt, cpu, pre, dec in steps
        if cpu >= QUIET_CPU_SHARE * dt
    ]
    out["undisturbed"] = summary(quiet) if quiet else None
    out["undisturbed_steps_share"] = len(quiet) / len(steps)
    out["between_steps_s"] = sum(busy_gaps)
    out["between_steps_share"] = sum(busy_gaps) / wall if wall else None
    out["cpu_share"] = sum(s[2] for s in steps) / wall if wall else None
    out["update_after_stamp_mean_s"] = statistics.fmean(log.update_s) if log.update_s else None
    return out


def probe(cal: Any, cost: Any, grid: Any) -> dict[str, Any]:
    """A few reference steps measured now against the profile's prediction for them: prefills
    of a middle grid size and a middle decode batch at a middle context. ``ratio`` (measured
    over predicted) away from 1 means the machine runs faster or slower than during the
    calibration (other work, clock speed), which confounds the comparison at this point."""
    n = grid["prefill_tokens"][len(grid["prefill_tokens"]) // 2]
    b = grid["decode_batches"][len(grid["decode_batches"]) // 2]
    ctx = grid["decode_contexts"][min(1, len(grid["decode_contexts"]) - 1)]
    pairs = []
    for _ in range(3):
        cal.add(n, 1)
        with cal.limits(budget=n):
            dt, pre, dec = cal.step()
        pairs.append((dt, cost.step_time(pre, dec)))
    reqs = cal.start_decodes(b, ctx, 10)
    for _ in range(8):
        dt, pre, dec = cal.step()
        pairs.append((dt, cost.step_time(pre, dec)))
    cal.abort_all(reqs)
    measured, predicted = sum(m for m, _ in pairs), sum(p for _, p in pairs)
    return {
        "steps": len(pairs),
        "measured_s": measured,
        "predicted_s": predicted,
        "ratio": measured / predicted if predicted > 0 else None,
    }


def replay_engine(
    engine: Any, reqs: Sequence[Any], log: StepLog, desc: str
) -> tuple[list[Any], float]:
    """Serve ``reqs`` on the real engine in wall-clock time; their records and the makespan."""
    from tqdm.auto import tqdm

    from core.engine import replay
    from core.metrics import RequestRecord

    log.clear()
    with tqdm(total=len(reqs), desc=desc, unit="req", leave=False) as bar:
        done = replay(engine, reqs, progress=bar.update)
    records = [RequestRecord.from_request(r) for r in done]
    for r in done:
        engine.drop(r.request_id)  # the next load reuses the ids
    starts = [r.arrival for r in records]
    ends = [r.finish for r in records if r.finish is not None]
    return records, (max(ends) - min(starts)) if ends else math.nan


def simulate(
    cost: Any, settings: Any, vocab: int, reqs: Sequence[Any]
) -> tuple[list[Any], float, Any]:
    """The same requests through the simulator: one replica with the engine's settings."""
    from core.metrics import RequestRecord
    from core.sched import SchedulerConfig
    from core.sim import ReplicaConfig, Simulator

    sched = SchedulerConfig(
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=settings.max_model_len,
        enable_chunked_prefill=True,
        vocab_size=vocab,
    )
    replica = ReplicaConfig(
        cost,
        num_kv_blocks=settings.num_kv_blocks,
        block_size=settings.block_size,
        scheduler=sched,
        prefix_cache="block" if settings.enable_prefix_caching else "none",
    )
    res = Simulator([replica]).run(reqs)
    records = [RequestRecord.from_request(r) for r in res.requests]
    starts = [r.arrival for r in records]
    ends = [r.finish for r in records if r.finish is not None]
    return records, (max(ends) - min(starts)) if ends else math.nan, res


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _point(
    name: str,
    load: float | None,
    rate: float | None,
    engine_recs: list[Any],
    sim_recs: list[Any],
    engine_span: float,
    sim_span: float,
    sim_res: Any,
    log: StepLog,
    cost: Any,
) -> dict[str, Any]:
    from core.metrics import compare

    cmp = compare(engine_recs, sim_recs, metrics=METRICS, stats=STATS)
    return _clean(
        {
            "name": name,
            "load": load,
            "rate_per_s": rate,
            "relative_error": cmp["relative_error"],
            "max_abs_relative_error": cmp["max_abs_relative_error"],
            "engine": cmp["a"],
            "simulator": cmp["b"],
            "matched": cmp["matched"],
            "incomplete": cmp["incomplete"],
            "only_in_engine": cmp["only_in_a"],
            "only_in_simulator": cmp["only_in_b"],
            "makespan_s": {"engine": engine_span, "simulator": sim_span},
            "steps": {"engine": len(log.steps), "simulator": sim_res.total_steps},
            "busy_s": {"engine": sum(s[1] for s in log.steps), "simulator": sum(sim_res.busy_time)},
            "step_time": step_diagnostics(log, cost),
        }
    )


# ---- the benchmark -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; returns the report (also written)."""
    import numpy as np
    import torch

    from core.metrics import compare
    from core.workload import PoissonProcess
    from scripts.calibrate import EngineSettings, Grid, build_llm
    from scripts.calibrate.measure import Calibrator

    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.requests = min(args.requests, 8)
        args.loads = args.loads if args.loads != DEFAULT_LOADS else (0.5,)
    cost, profile_path, fresh = _cost_model(args, out_dir)
    profile = cost.profile
    threads = args.threads if args.threads is not None else int(profile.get("threads") or 1)
    torch.set_num_threads(threads)
    mismatch = [] if fresh else machine_mismatch(profile, threads)
    if mismatch:
        print(
            f"warning: {profile_path} was calibrated on another machine or setup ("
            + "; ".join(mismatch)
            + "); its step times may not hold here: pass --calibrate "
            "or run `nox -s calibrate` first",
            file=sys.stderr,
        )
    prov = rep.provenance()
    settings = EngineSettings.from_dict(cost.engine_settings, where=str(profile_path))
    model_cfg = cost.model_config
    if model_cfg is None:
        raise ValueError(
            f"{profile_path}: the profile has no model config to build the engine from"
        )
    dtype = str(profile.get("dtype") or "float32")
    device = (profile.get("device") or {}).get("type")
    llm = build_llm(model_cfg, settings, dtype=dtype, device=device)
    engine = llm.engine
    vocab = int(llm.config.vocab_size)
    reqs, workload_info = make_workload(
        args.requests, args.length_scale, settings.max_model_len, vocab, args.seed
    )
    cal = Calibrator(llm, settings, Grid(**cost.grid), args.seed + 7)
    log = StepLog(engine)
    # warm-up: lazy initialisation and the allocator's growth happen before any timing
    replay_engine(
        engine,
        [
            type(r)(
                f"warmup-{i}",
                0.0,
                r.prompt_len,
                r.output_len,
                prompt_token_ids=list(r.prompt_token_ids),
            )
            for i, r in enumerate(reqs[:WARMUP_REQUESTS])
        ],
        log,
        "warm-up",
    )

    # capacity: everything at once
    probes = [probe(cal, cost, cost.grid)]
    e_recs, e_span = replay_engine(engine, reqs, log, "offline (capacity)")
    s_recs, s_span, s_res = simulate(cost, settings, vocab, reqs)
    capacity = len(reqs) / e_span
    offline = _point("offline", None, None, e_recs, s_recs, e_span, s_span, s_res, log, cost)
    offline["capacity_per_s"] = {"engine": capacity, "simulator": len(reqs) / s_span}
    offline["probe_before"] = probes[-1]

    points = []
    for i, load in enumerate(args.loads):
        rate = load * capacity
        times = PoissonProcess(rate).times(len(reqs), np.random.default_rng([args.seed, i + 1]))
        timed = with_arrivals(reqs, times)
        probes.append(probe(cal, cost, cost.grid))
        e_recs, e_span = replay_engine(engine, timed, log, f"load {load:.0%}")
        s_recs, s_span, s_res = simulate(cost, settings, vocab, timed)
        points.append(
            _point(
                f"load-{round(100 * load)}",
                load,
                rate,
                e_recs,
                s_recs,
                e_span,
                s_span,
                s_res,
                log,
                cost,
            )
        )
        points[-1]["probe_before"] = probes[-1]
        if args.repeat:  # the same stream again: how far two runs of the engine itself differ
            again, _ = replay_engine(engine, timed, log, f"load {load:.0%} again")
            floor = compare(e_recs, again, metrics=METRICS, stats=STATS)
            points[-1]["engine_repeat"] = _clean(
                {
                    "relative_error": floor["relative_error"],
                    "max_abs_relative_error": floor["max_abs_relative_error"],
                }
            )
    probes.append(probe(cal, cost, cost.grid))

    targets = []
    for pt in points:
        for key, err in pt["relative_error"].items():
            targets.append(
                rep.target(
                    f"{pt['name']}-{key}",
                    f"|relative error| of the simulator's {key.replace('_', ' ')} at {pt['load']:.0%} "
                    "load",
                    None if err is None else 100 * abs(err),
                    "<=",
                    100 * TARGET,
                    "%",
                )
            )
    errs = [abs(e) for pt in points for e in pt["relative_error"].values() if e is not None]
    config = {
        "requests": len(reqs),
        "loads": list(args.loads),
        "length_scale": args.length_scale,
        "seed": args.seed,
        "threads": threads,
        "engine_repeat": bool(args.repeat),
        "dtype": dtype,
        "engine": settings.to_dict(),
        "model": (profile.get("model") or {}).get("name"),
        "profile": str(profile_path),
        "profile_calibrated_in_this_run": fresh,
        "profile_machine_mismatch": mismatch,
        "cost_model": cost.describe(),
        "workload": workload_info,
        "target_abs_rel_error": TARGET,
        "arrivals": "Poisson, rate = load x capacity; seed [seed, load index + 1]",
    }
    results = {
        "capacity_per_s": capacity,
        "offline": offline,
        "loads": points,
        "max_abs_relative_error": max(errs) if errs else None,
        "all_within_target": bool(errs) and max(errs) <= TARGET,
        "probe_after": probes[-1],
        "profile_checks": profile.get("checks"),
        "profile_cpu_share": (profile.get("calibration") or {}).get("cpu_share"),
    }
    note = (
        rep.DEFAULT_NOTE + " Timing-based: other processes on the machine slow the real "
        "engine in ways no calibration predicts; see each load's step_time.cpu_share."
    )
    report = rep.make_report(
        BENCHMARK, config, results, targets, prov, time.perf_counter() - started, note=note
    )
    rep.write_json(out_dir / f"{BENCHMARK}.json", report)
    return report


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def render(report: dict[str, Any]) -> str:
    r, c = report["results"], report["config"]
    rows = []
    for pt in [r["offline"], *r["loads"]]:
        e = pt["relative_error"]
        st = pt["step_time"]
        quiet = st.get("undisturbed") or {}
        ratio = (pt.get("probe_before") or {}).get("ratio")
        rows.append(
            [
                pt["name"],
                "-" if pt["rate_per_s"] is None else f"{pt['rate_per_s']:.2f}",
                *(_pct(e.get(f"{m}_{s}")) for m in METRICS for s in STATS),
                _pct(st.get("bias")),
                _pct(quiet.get("bias")),
                "-" if st.get("cpu_share") is None else f"{st['cpu_share']:.2f}",
                _pct(None if ratio is None else ratio - 1),
            ]
        )
    head = [
        "run",
        "req/s",
        *(f"{m} {s}" for m in METRICS for s in STATS),
        "step bias",
        "quiet bias",
        "cpu",
        "drift",
    ]
    title = (
        f"Simulator vs engine: {c['requests']} Azure conv requests (lengths / "
        f"{c['length_scale']}), {c['model']}, {c['threads']} thread(s); capacity "
        f"{r['capacity_per_s']:.2f} req/s. Relative errors in %, target |error| <= "
        f"{100 * c['target_abs_rel_error']:.0f}% at each load"
    )
    table = rep.format_table(head, rows, title=title)
    floor = [
        [
            pt["name"],
            *(
                _pct(pt["engine_repeat"]["relative_error"].get(f"{m}_{s}"))
                for m in METRICS
                for s in STATS
            ),
        ]
        for pt in r["loads"]
        if pt.get("engine_repeat")
    ]
    if floor:
        table += "\n\n" + rep.format_table(
            ["run", *(f"{m} {s}" for m in METRICS for s in STATS)],
            floor,
            title="Noise floor: the same stream through the engine a second time, against the "
            "first (relative errors in %)",
        )
    s = report["summary"]
    verdict = (
        "every error within the target"
        if r["all_within_target"]
        else f"NOT every error within the target (max |error| "
        f"{100 * (r['max_abs_relative_error'] or math.nan):.1f}%)"
    )
    lines = [
        table,
        "",
        f"targets: {s['pass']} pass, {s['FAIL']} fail, {s['not checked']} not checked: {verdict}",
        "step bias: the profiled model's total step time over the engine's, minus 1, on the "
        "engine's own steps (quiet: on those during which it had its core); cpu: the "
        "engine's CPU time over its step time (< 1 with one thread: it waited for a core); "
        "drift: reference steps just before the run against the profile (the machine's "
        "speed then, relative to the calibration)",
    ]
    if c["profile_machine_mismatch"]:
        lines.append("profile from another machine: " + "; ".join(c["profile_machine_mismatch"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    print(f"\nwrote {Path(args.out) / f'{BENCHMARK}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
