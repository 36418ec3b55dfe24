"""``python -m scripts.bench fidelity``: the simulator against real engines, on this machine.

Three levels, each with the machine's own noise measured in the same minutes (the method in
full: scripts/bench/README.md, section ``fidelity``).

1. **Steps.** Every step our engine takes while it serves the benchmark's streams is recorded
   (:class:`~scripts.bench.fidelity_steps.StepRecorder`: the prefill chunks and decode
   contexts the scheduler chose, the wall and CPU time of the whole ``Engine.step()``); the
   profiled cost model predicts the same steps. A drift probe (the model's linear layers on a
   few rows: :func:`~scripts.bench.fidelity_steps.linear_probe`) is timed in the replay's idle
   waits and at least every ``--probe-gap`` steps. *Anchors* before and after every stream
   (reference steps timed against the profile) give the machine's speed relative to the
   profile; a step is scaled by the mean of the two anchors around it (``corrected``; the
   probe, tied to the first anchor, gives ``probe_corrected`` beside it). Reported: MAPE, bias
   and the worst step per kind (prefill, decode, mixed), raw and corrected.
2. **Requests.** ``--requests`` rows of the Azure LLM inference trace 2023 (conversation), their
   lengths divided by ``--length-scale``, served at Poisson loads of ``--loads`` (30/50/70/90%)
   of the capacity the engine measured on the same requests all at once. Each stream runs
   through the engine twice, back to back, and through the simulator once (with the profile
   scaled by the anchors around the two engine runs). Each statistic (mean, p50, p90,
   p99 of TTFT, TPOT, E2E) is compared with the mean of the two engine runs, beside the
   engine-vs-engine spread of those minutes; target: ``|error| <= max(5%, spread)`` for mean
   and p90 at every load up to 70%, reported at 90%.
3. **vLLM** (in ``--levels`` by default; its cached venv is built on first use; a vLLM that
   cannot run is reported, not fatal; :mod:`scripts.bench.fidelity_vllm`): the profiled cost
   model calibrated on vLLM's own step times, our scheduler configured as vLLM's, vLLM's
   TTFT/TPOT/E2E percentiles predicted on Poisson streams it serves. Target: within 10% on mean and p90 at loads up to 70%.

Writes ``<out>/fidelity.json``, ``<out>/fig-fidelity.png`` (predicted vs measured per step
and per request percentile) and ``<out>/fidelity-steps.csv.gz`` (every step: run, kind,
composition, the idle gap before it, measured and predicted seconds, CPU share). ``--quick``:
the smoke model, a tiny calibration, a few requests, one load, vLLM only with ``--levels
engine,vllm``: seconds to minutes, for tests.
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
DEFAULT_LOADS = (0.3, 0.5, 0.7, 0.9)
VLLM_LOADS = (0.3, 0.5, 0.7)
TARGET_LOAD = 0.7  # targets hold up to this load; above it the errors are reported
LENGTH_SCALE = 8
TARGET = 0.05
VLLM_TARGET = 0.10
STEP_TARGET = 0.05
METRICS = ("ttft", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p99")
TARGET_STATS = ("mean", "p90")
FIRST_TOKEN_ID = 3
WARMUP_REQUESTS = 8
PROBE_GAP = 32


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
            "Simulator fidelity on this machine: every engine step against the profiled cost "
            "model (drift-corrected by probes in the same minutes); request latencies at "
            "Poisson loads of 30/50/70/90%% of capacity, each stream twice through the engine "
            "(the noise floor) and once through the simulator; and vLLM's CPU build predicted "
            f"by a profile calibrated on its own steps. Writes <out>/{BENCHMARK}.json, "
            "<out>/fig-fidelity.png and <out>/fidelity-steps.csv.gz."
        ),
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="step profile of our engine (default: this device's under data/profiles/, else "
        f"the shipped data/{SHIPPED_PROFILE})",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate our engine first in this process (~2-3 min) and use that profile, "
        f"written to <out>/{BENCHMARK}-profile.json",
    )
    p.add_argument(
        "--model", default=None, help="with --calibrate: the model (default tiny-llama-20m)"
    )
    p.add_argument(
        "--requests", type=rep.positive_int, default=200, help="requests per stream (default 200)"
    )
    p.add_argument(
        "--loads",
        type=_loads,
        default=DEFAULT_LOADS,
        help="our engine's arrival rates as fractions of its capacity (default 0.3,0.5,0.7,0.9)",
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
    p.add_argument(
        "--probe-gap",
        type=rep.positive_int,
        default=PROBE_GAP,
        help=f"probe the machine's speed at least every this many steps (default {PROBE_GAP})",
    )
    p.add_argument("--seed", type=int, default=0, help="requests, prompts and arrivals (default 0)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)"
    )
    p.add_argument(
        "--levels",
        default=None,
        help="comma-separated subset of engine,vllm (default both; engine = levels 1 and 2; "
        "with --quick: engine)",
    )
    p.add_argument(
        "--vllm-requests",
        type=rep.positive_int,
        default=None,
        help="requests per vLLM stream (default: --requests)",
    )
    p.add_argument(
        "--vllm-loads",
        type=_loads,
        default=VLLM_LOADS,
        help="vLLM's arrival rates as fractions of its capacity (default 0.3,0.5,0.7)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="at most 8 requests and one load; without --profile, first a tiny calibration "
        "of tiny-llama-smoke: seconds; for tests, not for numbers",
    )
    return p


LEVELS = ("engine", "vllm")


def parse_levels(text: str | None, quick: bool) -> tuple[str, ...]:
    if text is None:
        return ("engine",) if quick else LEVELS
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in LEVELS]
    if bad or not names:
        raise ValueError(f"--levels {text!r}: choose from {', '.join(LEVELS)}")
    return names


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


def warmup_requests(reqs: Sequence[Any], prefix: str) -> list[Any]:
    """The first :data:`WARMUP_REQUESTS` of ``reqs`` under new ids, all arriving at once: a
    warm-up pass (lazy initialisation, the allocator's growth) before anything is timed."""
    return [
        type(r)(
            f"{prefix}-{i}",
            0.0,
            r.prompt_len,
            r.output_len,
            prompt_token_ids=list(r.prompt_token_ids),
        )
        for i, r in enumerate(reqs[:WARMUP_REQUESTS])
    ]


def with_arrivals(reqs: Sequence[Any], times: Sequence[float]) -> list[Any]:
    from dataclasses import replace

    return [replace(r, arrival_time=float(t)) for r, t in zip(reqs, times, strict=True)]


# ---- our engine --------------------------------------------------------------------------------


def reference_steps(cal: Any, cost: Any, grid: Any) -> list[tuple[float, float, float]]:
    """A few reference steps measured now: ``(seconds, CPU seconds, predicted seconds)`` of
    prefills of a middle grid size and of a middle decode batch at a middle context."""
    n = grid["prefill_tokens"][len(grid["prefill_tokens"]) // 2]
    b = grid["decode_batches"][len(grid["decode_batches"]) // 2]
    ctx = grid["decode_contexts"][min(1, len(grid["decode_contexts"]) - 1)]
    out = []
    for _ in range(3):
        cal.add(n, 1)
        with cal.limits(budget=n):
            dt, pre, dec = cal.step()
        out.append((dt, cal.last_cpu, cost.step_time(pre, dec)))
    reqs = cal.start_decodes(b, ctx, 10)
    for _ in range(8):
        dt, pre, dec = cal.step()
        out.append((dt, cal.last_cpu, cost.step_time(pre, dec)))
    cal.abort_all(reqs)
    return out


def anchor(cal: Any, cost: Any, probe: Any = None, rounds: int = 3) -> dict[str, Any]:
    """Reference steps against the profile (alternating with the drift probe, if any):
    ``ratio`` is the median of their measured over predicted times, over the steps during which
    the process had its core (all of them if none did): the machine's speed now relative to the
    profile's, at ``time`` (``time.perf_counter``); ``probe_s`` the probe's median meanwhile."""
    from .fidelity_steps import QUIET_CPU_SHARE

    t0 = time.perf_counter()
    steps, probes = [], [probe.measure()] if probe is not None else []
    for _ in range(rounds):
        steps += reference_steps(cal, cost, cost.grid)
        if probe is not None:
            probes.append(probe.measure())
    quiet = [(m, p) for m, c, p in steps if c >= QUIET_CPU_SHARE * m] or [
        (m, p) for m, _, p in steps
    ]
    return {
        "time": (t0 + time.perf_counter()) / 2,
        "steps": len(steps),
        "undisturbed_steps": len(quiet),
        "measured_s": sum(m for m, _, _ in steps),
        "predicted_s": sum(p for _, _, p in steps),
        "ratio": statistics.median(m / p for m, p in quiet),
        "probe_s": statistics.median(probes) if probes else None,
    }


def anchor_drift(anchors: Sequence[dict[str, Any]]) -> Any:
    """The speed between anchors: the mean of the ratios of the two anchors nearest in time."""
    from .fidelity_steps import Drift

    return Drift(1.0, 1.0, [(a["time"], a["ratio"]) for a in anchors], window=2)


def replay_engine(
    engine: Any, reqs: Sequence[Any], recorder: Any, run: str
) -> tuple[list[Any], float]:
    """Serve ``reqs`` on the real engine in wall-clock time, its steps recorded as ``run`` and
    the drift probe taken in its idle waits; the request records and the makespan."""
    from tqdm.auto import tqdm

    from core.engine import replay
    from core.metrics import RequestRecord

    recorder.run = run
    with tqdm(total=len(reqs), desc=run, unit="req", leave=False) as bar:
        done = replay(engine, reqs, progress=bar.update, sleep=recorder.idle_sleep)
    records = [RequestRecord.from_request(r) for r in done]
    for r in done:
        engine.drop(r.request_id)  # the next run reuses the ids
    return records, _span(records)


def _span(records: Sequence[Any]) -> float:
    ends = [r.finish for r in records if r.finish is not None]
    return (max(ends) - min(r.arrival for r in records)) if ends else math.nan


def request_level(
    engine_runs: Sequence[Sequence[Any]],
    predicted: Sequence[Any],
    predicted_raw: Sequence[Any] | None,
    target: float,
) -> dict[str, Any]:
    """Per statistic (``<metric>_<stat>``): each engine run's value, their mean (``measured``),
    the simulator's (``predicted``; ``predicted_raw`` without the drift scale), its relative
    error against the mean, the engine-vs-engine ``spread`` (|run 1 - run 2| over their mean)
    and the ``bound`` the error is held to: max(``target``, spread)."""
    from core.metrics import summarize

    runs = [summarize(r) for r in engine_runs]
    pred = summarize(predicted)
    raw = summarize(predicted_raw) if predicted_raw is not None else None
    out: dict[str, Any] = {}
    for m in METRICS:
        for s in STATS:
            key = f"{m}_{s}"
            vals = [float(r[key]) for r in runs]
            measured = statistics.fmean(vals)
            ok = measured > 0 and math.isfinite(measured)
            spread = abs(vals[0] - vals[1]) / measured if len(vals) == 2 and ok else None
            out[key] = {
                "engine_runs": vals,
                "measured": measured,
                "predicted": float(pred[key]),
                "error": float(pred[key]) / measured - 1 if ok else None,
                "error_raw": float(raw[key]) / measured - 1 if ok and raw is not None else None,
                "spread": spread,
                "bound": max(target, spread or 0.0),
            }
    return out


def request_targets(
    name: str, points: Sequence[dict[str, Any]], what: str, up_to: float
) -> list[dict[str, Any]]:
    """One target per load up to ``up_to`` and statistic of :data:`TARGET_STATS`: |error| <=
    its bound."""
    out = []
    for pt in points:
        if pt["load"] > up_to + 1e-9:
            continue
        for key, e in pt["requests"].items():
            if key.split("_")[1] not in TARGET_STATS:
                continue
            err = e["error"]
            out.append(
                rep.target(
                    f"{name}-{pt['name']}-{key}",
                    f"|error| of the predicted {key.replace('_', ' ')} of {what} at "
                    f"{pt['load']:.0%} load, within max(target, engine-vs-engine spread)",
                    None if err is None else 100 * abs(err),
                    "<=",
                    100 * e["bound"],
                    "%",
                )
            )
    return out


def step_targets(name: str, steps: dict[str, Any]) -> list[dict[str, Any]]:
    """MAPE <= 5% per kind of step, drift-corrected, on the steps during which the engine had
    its core (a step that waited for one took what no cost model can know; all steps are
    reported beside)."""
    by_kind = (steps.get("quiet_corrected") or {}).get("by_kind") or {}
    return [
        rep.target(
            f"{name}-steps-{kind}-mape",
            f"MAPE of the drift-corrected profiled step time of {kind} steps of {name} "
            "during which it had its core",
            100 * s["mape"],
            "<=",
            100 * STEP_TARGET,
            "%",
        )
        for kind, s in by_kind.items()
    ]


def _load_point(name: str, load: float, rate: float, **parts: Any) -> dict[str, Any]:
    return {"name": name, "load": load, "rate_per_s": rate, **parts}


def run_engine_levels(
    args: argparse.Namespace, out_dir: Path
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Levels 1 and 2 on our engine: (config, results, targets, per-step pairs)."""
    import numpy as np
    import torch

    from core.workload import PoissonProcess
    from scripts.calibrate import EngineSettings, Grid, build_llm
    from scripts.calibrate.measure import Calibrator

    from .fidelity_steps import (
        Drift,
        DriftProbe,
        ScaledCost,
        StepRecorder,
        linear_probe,
        step_errors,
        step_pairs,
    )

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
    probe = DriftProbe(linear_probe(llm.model))
    recorder = StepRecorder(engine, probe, max_gap=args.probe_gap)
    warm = warmup_requests(reqs, "warmup")
    replay_engine(engine, warm, recorder, "warm-up")  # lazy initialisation, allocator growth
    probe.measure()  # the probe's own first-call costs
    recorder.run = "anchor"
    anchors = [anchor(cal, cost, probe)]
    probe_drift = Drift(anchors[0]["probe_s"], anchors[0]["ratio"], probe.samples)

    # capacity: everything at once
    e_recs, e_span = replay_engine(engine, reqs, recorder, "offline")
    recorder.run = "anchor"
    anchors.append(anchor(cal, cost, probe))
    capacity = len(reqs) / e_span
    drift = anchor_drift(anchors)
    f_off = drift.median_factor(recorder.of_run("offline"))
    s_recs, s_span, _ = simulate(ScaledCost(cost, f_off), settings, vocab, reqs)
    offline = {
        "capacity_per_s": {"engine": capacity, "simulator": len(reqs) / s_span},
        "makespan_s": {"engine": e_span, "simulator": s_span},
        "drift_factor": f_off,
        "requests": request_level([e_recs], s_recs, None, TARGET),
    }

    streams = []
    for i, load in enumerate(args.loads):
        rate = load * capacity
        times = PoissonProcess(rate).times(len(reqs), np.random.default_rng([args.seed, i + 1]))
        timed = with_arrivals(reqs, times)
        name = f"load-{round(100 * load)}"
        runs = [replay_engine(engine, timed, recorder, f"{name}-{k}")[0] for k in ("a", "b")]
        recorder.run = "anchor"
        anchors.append(anchor(cal, cost, probe))
        streams.append((name, load, rate, timed, runs))
    drift = anchor_drift(anchors)
    points = []
    for name, load, rate, timed, runs in streams:
        steps_ab = recorder.of_run(f"{name}-a", f"{name}-b")
        f = drift.median_factor(steps_ab)
        raw, _, _ = simulate(cost, settings, vocab, timed)
        sim, sim_span, sim_res = simulate(ScaledCost(cost, f), settings, vocab, timed)
        points.append(
            _load_point(
                name,
                load,
                rate,
                drift_factor=f,
                probe_drift_factor=probe_drift.median_factor(steps_ab),
                requests=request_level(runs, sim, raw, TARGET),
                makespan_s={"engine": [_span(r) for r in runs], "simulator": sim_span},
                steps={"engine": len(steps_ab), "simulator": sim_res.total_steps},
                cpu_share=sum(r.cpu_seconds for r in steps_ab)
                / max(1e-9, sum(r.seconds for r in steps_ab)),
            )
        )

    served = [r for r in recorder.records if r.run not in ("warm-up", "anchor")]
    steps = step_errors(served, cost, drift)
    steps["probe_corrected"] = step_errors(served, cost, probe_drift)["corrected"]
    steps["by_run"] = {
        run: step_errors([r for r in served if r.run == run], cost, drift)["corrected"]
        for run in dict.fromkeys(r.run for r in served)
    }
    probes = [s for _, s in probe.samples]
    config = {
        "requests": len(reqs),
        "loads": list(args.loads),
        "length_scale": args.length_scale,
        "seed": args.seed,
        "threads": threads,
        "dtype": dtype,
        "engine": settings.to_dict(),
        "model": (profile.get("model") or {}).get("name"),
        "profile": str(profile_path),
        "profile_calibrated_in_this_run": fresh,
        "profile_machine_mismatch": mismatch,
        "cost_model": cost.describe(),
        "workload": workload_info,
        "probe": "every Linear of the model and the LM head on 8 rows, median of 3, in idle "
        f"waits and at least every {args.probe_gap} steps",
        "arrivals": "Poisson, rate = load x capacity; seed [seed, load index + 1]",
    }
    results = {
        "capacity_per_s": capacity,
        "steps": steps,
        "offline": offline,
        "loads": points,
        "anchors": anchors,
        "probes": {
            "count": len(probes),
            "forced_between_steps": recorder.forced_probes,
            "min_s": min(probes),
            "max_s": max(probes),
            "drift_factor_range": [
                probe_drift.anchor_ratio * min(probes) / probe_drift.reference_s,
                probe_drift.anchor_ratio * max(probes) / probe_drift.reference_s,
            ],
        },
        "update_after_stamp_mean_s": statistics.fmean(recorder.update_s)
        if recorder.update_s
        else None,
        "profile_checks": profile.get("checks"),
    }
    targets = step_targets("engine", steps) + request_targets(
        "engine", points, "our engine", TARGET_LOAD
    )
    return config, results, targets, step_pairs(served, cost, drift)


# ---- vLLM --------------------------------------------------------------------------------------


def _vllm_stream(
    call: Any, reqs: Sequence[Any], run: str
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """One stream through vLLM in the worker: request records, step records (perf_counter
    times) and the raw reply."""
    from .fidelity_vllm import parse_steps, request_records

    reply = call(
        {
            "cmd": "replay",
            "requests": [
                {
                    "id": r.request_id,
                    "prompt": list(r.prompt_token_ids),
                    "max_tokens": r.output_len,
                    "arrival": r.arrival_time,
                }
                for r in reqs
            ],
        }
    )
    t0 = float(reply["t0"])
    records = request_records(reply, {r.request_id: r.prompt_len for r in reqs})
    return records, parse_steps(reply["steps"], run, offset=t0), reply


def run_vllm_level(
    args: argparse.Namespace, out_dir: Path
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Level 3: vLLM's CPU build calibrated and predicted (config, results, targets, per-step
    pairs); raises :class:`scripts.bench.peers.envs.PeerUnavailable` when vLLM cannot run."""
    import numpy as np
    import torch

    from core.model.spec import ModelSpec
    from core.sim.profiled import ProfiledCostModel, write_profile
    from core.workload import PoissonProcess
    from scripts.calibrate import MODELS, device_info

    from .fidelity_steps import ScaledCost, step_errors, step_pairs
    from .fidelity_vllm import (
        QUICK_VLLM_GRID,
        VLLM_GRID,
        VLLM_SETTINGS,
        WORKER,
        calibrate_vllm,
        drift_of,
        hf_checkpoint,
        scheduling_summary,
        simulate_as_vllm,
    )
    from .peers.run import LOAD_TIMEOUT_S, WorkerProcess
    from .peers.systems import VLLM, WORKERS

    model = "tiny-llama-smoke" if args.quick else "tiny-llama-20m"
    model_cfg = dict(MODELS[model])
    settings = VLLM_SETTINGS
    if args.quick:
        settings = type(settings)(
            **{**settings.to_dict(), "max_model_len": 512, "num_kv_blocks": 512}
        )
    grid = QUICK_VLLM_GRID if args.quick else VLLM_GRID
    threads = args.threads or 1
    python = VLLM.python(lambda m: print(m, file=sys.stderr))
    ckpt = hf_checkpoint(model_cfg, out_dir / f"fidelity-vllm-{model}", args.seed)
    log = out_dir / "peer-logs" / "vllm-fidelity.log"
    worker = WorkerProcess(
        "vllm", [str(python), str(WORKERS / WORKER)], VLLM.thread_env(threads), log
    )
    try:
        spec = ModelSpec.from_hf_config(model_cfg)
        t0 = time.perf_counter()
        loaded = worker.call(
            {
                "cmd": "load",
                "model": str(ckpt),
                "threads": threads,
                "dtype": "fp32",
                "max_num_seqs": settings.max_num_seqs,
                "max_num_batched_tokens": settings.max_num_batched_tokens,
                "max_model_len": settings.max_model_len,
                "kv_tokens": settings.kv_tokens,
                "kv_bytes_per_token": spec.kv_bytes_per_token("float32"),
                "block_size": settings.block_size,
                "enable_prefix_caching": settings.enable_prefix_caching,
                "enforce_eager": True,
            },
            timeout=LOAD_TIMEOUT_S,
        )
        load_s = time.perf_counter() - t0
        info = {**device_info("cpu", threads), "torch_version": torch.__version__}
        profile, cal_probes, raw_replies, cal = calibrate_vllm(
            worker.call, model_cfg, settings, grid, args.seed, info
        )
        profile_path = write_profile(profile, out_dir / f"{BENCHMARK}-vllm-profile.json")
        cost = ProfiledCostModel(profile, source=str(profile_path))
        anchors = [anchor(cal, cost)]
        vocab = int(model_cfg["vocab_size"])
        n = args.vllm_requests or args.requests
        reqs, workload_info = make_workload(
            n, args.length_scale, settings.max_model_len, vocab, args.seed
        )
        warm = warmup_requests(reqs, "vwarm")
        _, _, warm_reply = _vllm_stream(worker.call, warm, "warm-up")
        blocks = int(loaded.get("num_kv_blocks") or settings.num_kv_blocks)
        all_steps, later_probes = [], []
        e_recs, steps, reply = _vllm_stream(worker.call, reqs, "offline")
        all_steps += steps
        later_probes += [(float(reply["t0"]) + t, s) for t, s in reply["probes"]]
        anchors.append(anchor(cal, cost))
        capacity = len(reqs) / _span(e_recs)
        stream_runs: list[tuple[str, float, float, list[Any], list[list[Any]]]] = []
        loads = (0.5,) if args.quick else args.vllm_loads
        for i, load in enumerate(loads):
            rate = load * capacity
            times = PoissonProcess(rate).times(
                len(reqs), np.random.default_rng([args.seed, 100 + i])
            )
            timed = with_arrivals(reqs, times)
            name = f"load-{round(100 * load)}"
            runs = []
            for k in ("a", "b"):
                recs, steps, reply = _vllm_stream(worker.call, timed, f"{name}-{k}")
                runs.append(recs)
                all_steps += steps
                later_probes += [(float(reply["t0"]) + t, s) for t, s in reply["probes"]]
            anchors.append(anchor(cal, cost))
            stream_runs.append((name, load, rate, timed, runs))
    finally:
        worker.close()

    drift = anchor_drift(anchors)
    probe_drift = drift_of(cal_probes, later_probes)
    f_off = drift.median_factor([s for s in all_steps if s.run == "offline"])
    s_off, sim_steps_off = simulate_as_vllm(ScaledCost(cost, f_off), reqs, blocks, vocab)
    offline = {
        "capacity_per_s": {"vllm": capacity, "simulator": len(reqs) / _span(s_off)},
        "drift_factor": f_off,
        "requests": request_level([e_recs], s_off, None, VLLM_TARGET),
        "scheduling": {
            "vllm": scheduling_summary([s for s in all_steps if s.run == "offline"]),
            "simulator": scheduling_summary(sim_steps_off),
        },
    }
    points = []
    for name, load, rate, timed, runs in stream_runs:
        mine = [s for s in all_steps if s.run in (f"{name}-a", f"{name}-b")]
        f = drift.median_factor(mine)
        raw, _ = simulate_as_vllm(cost, timed, blocks, vocab)
        sim, sim_steps = simulate_as_vllm(ScaledCost(cost, f), timed, blocks, vocab)
        points.append(
            _load_point(
                name,
                load,
                rate,
                drift_factor=f,
                probe_drift_factor=probe_drift.median_factor(mine),
                requests=request_level(runs, sim, raw, VLLM_TARGET),
                scheduling={
                    "vllm": scheduling_summary([s for s in mine if s.run.endswith("-a")]),
                    "simulator": scheduling_summary(sim_steps),
                },
            )
        )
    steps = step_errors(all_steps, cost, drift)
    steps["probe_corrected"] = step_errors(all_steps, cost, probe_drift)["corrected"]
    config = {
        "system": loaded.get("version"),
        "vllm_config": loaded.get("config"),
        "vllm_kv_blocks": blocks,
        "vllm_block_size": loaded.get("block_size"),
        "load_s": load_s,
        "model": model,
        "requests": len(reqs),
        "loads": list(loads),
        "settings": settings.to_dict(),
        "grid": grid.to_dict(),
        "profile": str(profile_path),
        "workload": workload_info,
        "probe": "8 x 256 @ 256 x 32000 fp32 matmul in the worker, median of 3, every "
        "24 calibration steps and in the replays' idle waits",
        "arrivals": "Poisson, rate = load x vLLM's capacity; seed [seed, 100 + load index]",
    }
    results = {
        "capacity_per_s": capacity,
        "calibration_s": profile["calibration"]["elapsed_s"],
        "profile_checks": profile["checks"],
        "steps": steps,
        "offline": offline,
        "loads": points,
        "probes": {"calibration": len(cal_probes), "replays": len(later_probes)},
        "anchors": anchors,
    }
    rep.write_json(
        out_dir / f"{BENCHMARK}-vllm-sample.json",
        {"calibration_step_replies": raw_replies, "warmup_replay": warm_reply},
    )
    targets = step_targets("vllm", steps) + request_targets("vllm", points, "vLLM", TARGET_LOAD)
    return config, results, targets, step_pairs(all_steps, cost, drift)


# ---- the simulator -------------------------------------------------------------------------


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


# ---- the benchmark -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; returns the report (also written)."""
    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = parse_levels(args.levels, args.quick)
    if args.quick:
        args.requests = min(args.requests, 8)
        args.loads = args.loads if args.loads != DEFAULT_LOADS else (0.5,)
    prov = rep.provenance()
    config: dict[str, Any] = {"levels": list(levels), "target_step_mape": STEP_TARGET}
    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    pairs: dict[str, list[dict[str, Any]]] = {}
    if "engine" in levels:
        c, r, t, p = run_engine_levels(args, out_dir)
        config["engine"], results["engine"], pairs["engine"] = c, r, p
        config["target_abs_rel_error"] = TARGET
        targets += t
    if "vllm" in levels:
        from .peers.envs import PeerUnavailable
        from .peers.run import PeerRunError

        try:
            c, r, t, p = run_vllm_level(args, out_dir)
            config["vllm"], results["vllm"], pairs["vllm"] = c, r, p
            config["vllm_target_abs_rel_error"] = VLLM_TARGET
            targets += t
        except (PeerUnavailable, PeerRunError) as exc:
            results["vllm"] = {"status": "unavailable", "reason": str(exc)}
            print(f"warning: vLLM level skipped: {exc}", file=sys.stderr)
    note = (
        rep.DEFAULT_NOTE + " Timing-based: other processes on the machine slow the engines in "
        "ways no calibration predicts; the drift probes and the engine-vs-engine spread measure "
        "how much, in the same minutes."
    )
    report = rep.make_report(
        BENCHMARK, config, results, targets, prov, time.perf_counter() - started, note=note
    )
    rep.write_json(out_dir / f"{BENCHMARK}.json", report)
    if pairs:
        import pandas as pd

        steps_csv = out_dir / f"{BENCHMARK}-steps.csv.gz"
        pd.concat(
            [pd.DataFrame(rows).assign(system=name) for name, rows in pairs.items() if rows]
        ).to_csv(steps_csv, index=False)
        report["steps_csv"] = str(steps_csv)
        from .fidelity_plot import figure

        report["figure"] = str(figure(report, pairs, out_dir / f"fig-{BENCHMARK}.png"))
    return report


def _pct(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}"


def _step_table(name: str, steps: dict[str, Any]) -> str:
    rows = []
    for kind, s in (steps["corrected"].get("by_kind") or {}).items():
        raw = steps["raw"]["by_kind"].get(kind, {})
        probe = (steps.get("probe_corrected") or {}).get("by_kind", {}).get(kind, {})
        quiet = (steps.get("quiet_corrected") or {}).get("by_kind", {}).get(kind, {})
        floor = (steps.get("noise_floor") or {}).get(kind)
        rows.append(
            [
                kind,
                s["steps"],
                f"{100 * raw.get('mape', math.nan):.1f}",
                f"{100 * s['mape']:.1f}",
                f"{100 * probe.get('mape', math.nan):.1f}",
                _pct(s["bias"]),
                _pct(s["worst_error"]),
                "-" if not quiet else f"{100 * quiet['mape']:.1f} ({quiet['steps']})",
                "-" if not floor else f"{100 * floor['mape']:.1f}",
                "-" if not floor or "cell_mape" not in floor else f"{100 * floor['cell_mape']:.1f}",
            ]
        )
    table = rep.format_table(
        [
            "kind",
            "steps",
            "MAPE raw %",
            "MAPE anchor-corrected %",
            "MAPE probe-corrected %",
            "bias %",
            "worst %",
            "quiet MAPE %",
            "noise floor %",
            "MAPE of cell medians %",
        ],
        rows,
        title=f"{name}: profiled step time vs every measured step (target MAPE <= "
        f"{100 * STEP_TARGET:.0f}%; noise floor: the MAPE of each step against its "
        "composition's median measured time; cell medians: the model's median prediction per "
        "composition against its median measurement)",
    )
    trend = steps.get("after_change") or []
    if trend:
        table += "\ndecode steps, median error % by steps of unchanged composition before them: "
        table += ", ".join(
            f"{t['steps_unchanged_before']}: {_pct(t['median_error'])} ({t['steps']})"
            for t in trend
        )
    return table


def _request_table(name: str, points: Sequence[dict[str, Any]]) -> str:
    rows = []
    for pt in points:
        for m in METRICS:
            cells = []
            for s in TARGET_STATS:
                e = pt["requests"][f"{m}_{s}"]
                spread = "-" if e["spread"] is None else f"{100 * e['spread']:.1f}"
                cells.append(f"{_pct(e['error'])} ({spread})")
            rows.append([pt["name"], m, *cells, f"{pt.get('drift_factor', math.nan):.2f}"])
    return rep.format_table(
        ["run", "metric", "mean: error % (spread %)", "p90: error % (spread %)", "drift"],
        rows,
        title=f"{name}: simulator vs the mean of two runs of the same stream; spread = "
        "|run 1 - run 2| / mean",
    )


def render(report: dict[str, Any]) -> str:
    r = report["results"]
    parts = []
    if "engine" in r:
        e = r["engine"]
        parts.append(_step_table("our engine", e["steps"]))
        parts.append(
            f"capacity {e['capacity_per_s']:.2f} req/s; anchors (reference steps, measured / "
            "profile) before and after each stream: "
            + ", ".join(f"{a['ratio']:.2f}" for a in e["anchors"])
            + f"; probe drift factors {e['probes']['drift_factor_range'][0]:.2f}-"
            f"{e['probes']['drift_factor_range'][1]:.2f}"
        )
        parts.append(
            _request_table("our engine", [*([{"name": "offline", **e["offline"]}]), *e["loads"]])
        )
    v = r.get("vllm")
    if v and v.get("status") == "unavailable":
        parts.append(f"vLLM: not run ({v['reason']})")
    elif v:
        parts.append(_step_table("vLLM", v["steps"]))
        parts.append(
            f"vLLM capacity {v['capacity_per_s']:.2f} req/s (simulated "
            f"{v['offline']['capacity_per_s']['simulator']:.2f}); calibration "
            f"{v['calibration_s']:.0f} s; anchors (reference steps, measured / profile): "
            + ", ".join(f"{a['ratio']:.2f}" for a in v["anchors"])
        )
        parts.append(_request_table("vLLM", [{"name": "offline", **v["offline"]}, *v["loads"]]))
    s = report["summary"]
    parts.append(f"targets: {s['pass']} pass, {s['FAIL']} fail, {s['not checked']} not checked")
    return "\n\n".join(parts)


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
