"""Gavel-format job traces and per-GPU-type throughputs, turned into :class:`core.jobsim.GpuJob` s
whose batch size changes as they train (Shockwave's dynamic adaptation).

A trace line has 12 tab-separated fields: job type (``"<model> (batch size <bs>)"``), command,
working directory, steps argument, needs-data-dir flag, total steps, scale factor (GPUs),
adaptation mode (``static``, ``accordion`` or ``gns``), priority weight, SLO, duration (s, on a
V100 at the initial batch size) and arrival time (s). The throughput file maps a GPU type to
``"('<job type>', <scale factor>)"`` -> ``{"null": steps per second, ...}``.

A job trains ``ceil(total_steps / steps_per_epoch)`` epochs of its dataset; each epoch runs at
the batch size the adaptation mode gives it, and lasts ``(dataset / bs) / throughput(bs)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.data import data_path, open_data_file
from core.jobsim import EpochWork, GpuJob

TRACE_DIR = ("traces", "shockwave")
THROUGHPUTS = "tacc_throughputs.json"
#: The traces the authors' reproduce/*.sh run, by their cluster size (all V100).
TRACES = {
    32: "120_0.2_5_100_40_25_0,0.5,0.5_0.6,0.3,0.09,0.01_multigpu_dynamic.trace",
    64: "220_0.2_5_100_25_4_0,0.5,0.5_0.6,0.3,0.09,0.01_multigpu_dynamic.trace",
    128: "460_0.2_5_100_10_1_0,0.5,0.5_0.6,0.3,0.09,0.01_multigpu_dynamic.trace",
    256: "900_0.2_5_100_5_15_0,0.5,0.5_0.6,0.3,0.09,0.01_multigpu_dynamic.trace",
}
DATASET_SAMPLES = {
    "ResNet-18": 50000,  # CIFAR-10
    "ResNet-50": 100000,  # the ImageNet subset the authors train on
    "Transformer": 10000,  # Multi30k
    "LM": 59675,  # Wikitext-2
    "Recommendation": 117907,  # ML-20M
    "A3C": 4,
    "CycleGAN": 6287,
}
MAX_BATCH = {
    "LM": 80,
    "ResNet-18": 256,
    "ResNet-50": 128,
    "Recommendation": 8192,
    "Transformer": 128,
}
MODES = ("static", "accordion", "gns")
GNS_DOUBLING_EPOCHS = (20, 30, 50, 70)
_JOB_TYPE = re.compile(r"^(?P<model>.+) \(batch size (?P<bs>\d+)\)$")
_KEY = re.compile(r"^\('(?P<job_type>.+)', (?P<sf>\d+)\)$")


class TraceError(ValueError):
    """A trace or throughput file that cannot be used: the message names the file and line."""


@dataclass(frozen=True)
class TraceJob:
    """One trace line, parsed."""

    line: int
    model: str
    batch_size: int
    total_steps: int
    scale_factor: int
    mode: str
    duration_s: float
    arrival_s: float


def parse_trace(path: str | Path) -> list[TraceJob]:
    """Every line of a Gavel trace file; a malformed line raises :class:`TraceError` naming the
    file, the line and the field."""
    jobs: list[TraceJob] = []
    with open_data_file(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            fields = raw.rstrip("\n").split("\t")
            if len(fields) != 12:
                raise TraceError(f"{path}:{n}: expected 12 tab-separated fields, got {len(fields)}")
            m = _JOB_TYPE.match(fields[0])
            if not m:
                raise TraceError(
                    f"{path}:{n}: job type {fields[0]!r} is not '<model> (batch size <n>)'"
                )
            if m["model"] not in DATASET_SAMPLES:
                raise TraceError(f"{path}:{n}: unknown model {m['model']!r}")
            if fields[7] not in MODES:
                raise TraceError(f"{path}:{n}: mode {fields[7]!r} is not one of {MODES}")
            try:
                job = TraceJob(
                    n,
                    m["model"],
                    int(m["bs"]),
                    int(fields[5]),
                    int(fields[6]),
                    fields[7],
                    float(fields[10]),
                    float(fields[11]),
                )
            except ValueError as exc:
                raise TraceError(f"{path}:{n}: bad number ({exc})") from None
            if job.total_steps <= 0 or job.scale_factor < 1 or job.arrival_s < 0:
                raise TraceError(
                    f"{path}:{n}: steps {job.total_steps}, scale factor {job.scale_factor} and "
                    f"arrival {job.arrival_s} must be positive"
                )
            jobs.append(job)
    if not jobs:
        raise TraceError(f"{path}: no jobs")
    return jobs


Throughputs = dict[str, dict[tuple[str, int], float]]


def load_throughputs(
    path: str | Path | None = None, types: Iterable[str] = ("v100",)
) -> Throughputs:
    """Steps per second by GPU type and (job type, scale factor), for the consolidated types."""
    p = Path(path) if path else data_path(*TRACE_DIR, THROUGHPUTS)
    with open_data_file(p) as f:
        raw = json.load(f)
    out: Throughputs = {}
    for t in types:
        if t not in raw:
            raise TraceError(f"{p}: no GPU type {t!r} (has {sorted(raw)})")
        table = {}
        for key, val in raw[t].items():
            m = _KEY.match(key)
            if m and isinstance(val, dict) and val.get("null"):
                table[(m["job_type"], int(m["sf"]))] = float(val["null"])
        out[t] = table
    return out


def accordion_schedule(model: str, bs0: int, epochs: int) -> list[int]:
    """Accordion: the largest batch size outside the model's critical regimes, and never in the
    first 30% of training (the authors' regimes per model)."""
    if model not in MAX_BATCH or model == "Transformer":
        return [bs0] * epochs
    if model == "ResNet-18":
        head = 20 if bs0 == 256 else 10
        critical = set(range(head)) | set(range(150, 160)) | set(range(250, 260))
    elif model == "ResNet-50":
        critical = {e for e in range(epochs) if e % 30 < 10}
    elif model == "LM":
        critical = set(range(10))
    else:  # Recommendation
        head = 30 if bs0 in (512, 1024) else 40 if bs0 == 2048 else 10
        critical = set(range(head)) | set(range(60, 70)) | set(range(80, 90))
    return [
        MAX_BATCH[model] if e not in critical and e > 0.3 * epochs else bs0 for e in range(epochs)
    ]


def gns_schedule(model: str, bs0: int, epochs: int) -> list[int]:
    """Gradient-noise-scale adaptation, simplified: the batch size doubles at epochs 20, 30, 50
    and 70, up to the model's largest batch size. (The authors hand-write one doubling table
    per model and initial batch size; these epochs are the ones their ResNet-18 tables use.)"""
    cap = MAX_BATCH.get(model, bs0)
    out, bs = [], bs0
    for e in range(epochs):
        if e in GNS_DOUBLING_EPOCHS and e < epochs - 1:
            bs = min(cap, bs * 2) if bs < cap else bs
        out.append(bs)
    return out


def batch_schedule(job: TraceJob, epochs: int) -> list[int]:
    if job.mode == "accordion":
        return accordion_schedule(job.model, job.batch_size, epochs)
    if job.mode == "gns":
        return gns_schedule(job.model, job.batch_size, epochs)
    return [job.batch_size] * epochs


def to_gpu_job(job_id: int, job: TraceJob, throughputs: Throughputs, source: str) -> GpuJob:
    """The job's epochs, batch sizes and per-type epoch seconds. A batch size the throughput
    file lacks keeps the previous one (as the authors' simulator does)."""
    samples = DATASET_SAMPLES[job.model]
    steps_per_epoch = math.ceil(samples / job.batch_size)
    epochs = max(1, math.ceil(job.total_steps / steps_per_epoch))

    def rate(t: str, bs: int) -> float | None:
        return throughputs[t].get((f"{job.model} (batch size {bs})", job.scale_factor))

    for t in throughputs:
        if rate(t, job.batch_size) is None:
            raise TraceError(
                f"{source}:{job.line}: no {t} throughput for {job.model} at batch size "
                f"{job.batch_size} on {job.scale_factor} GPUs"
            )
    schedule: list[int] = []
    for bs in batch_schedule(job, epochs):
        ok = all(rate(t, bs) is not None for t in throughputs)
        schedule.append(bs if ok else (schedule[-1] if schedule else job.batch_size))

    def epoch_s(t: str, bs: int) -> float:
        r = rate(t, bs)
        assert r is not None  # every batch size left in the schedule has a rate on every type
        return samples / bs / r

    seconds = {t: [epoch_s(t, bs) for bs in schedule] for t in throughputs}
    # the regimes the job goes through (Shockwave's prior knows them, not when they come) and
    # the V100 epoch time of each, what the authors' predictor reads from the profile
    modes = sorted(set(schedule))
    mode_seconds = {bs: epoch_s("v100", bs) for bs in modes} if "v100" in throughputs else {}
    return GpuJob(
        job_id,
        job.arrival_s,
        job.scale_factor,
        EpochWork(seconds, schedule),
        label=f"{job.model} (bs {job.batch_size}, {job.mode})",
        info={
            "mode": job.mode,
            "model": job.model,
            "bs_modes": tuple(modes),
            "mode_seconds": mode_seconds,
        },
    )


def load_jobs(
    trace: str | Path,
    throughputs: Throughputs,
    *,
    limit: int | None = None,
) -> list[GpuJob]:
    """The first ``limit`` jobs (all by default) of a Gavel trace, in arrival order."""
    parsed = parse_trace(trace)
    parsed.sort(key=lambda j: (j.arrival_s, j.line))
    if limit is not None:
        parsed = parsed[:limit]
    return [to_gpu_job(i, j, throughputs, str(trace)) for i, j in enumerate(parsed)]


def shipped_trace(gpus: int) -> Path:
    if gpus not in TRACES:
        raise TraceError(f"no shipped trace for {gpus} GPUs (have {sorted(TRACES)})")
    return data_path(*TRACE_DIR, TRACES[gpus])


def check_trace(path: Path) -> None:
    """``--trace``: parse every line and look up every job's throughput now."""
    tp = load_throughputs()
    for i, j in enumerate(parse_trace(path)):
        to_gpu_job(i, j, tp, str(path))


def mode_seconds_of(job: GpuJob) -> Mapping[int, float]:
    ms = job.info.get("mode_seconds", {})
    assert isinstance(ms, Mapping)
    return ms


def bs_modes_of(job: GpuJob) -> Sequence[int]:
    bm = job.info.get("bs_modes", ())
    assert isinstance(bm, Sequence)
    return bm
