"""Step-level fidelity: every engine step recorded with its composition and time, drift probes
taken in the same minutes, and the cost model's error per kind of step.

- :class:`StepRecorder` wraps an engine's ``step`` and its runner's ``execute``: one
  :class:`StepRecord` per step the runner executed (the prefill chunks and decode contexts the
  scheduler chose, as :func:`core.sim.cost.chunks_of` reads them, and the wall and CPU seconds
  of the whole ``Engine.step()``), labelled with the run it belongs to.
- :class:`DriftProbe` times a fixed reference computation now and then: in the replay's idle
  waits (:meth:`StepRecorder.idle_sleep`, where it delays nothing) and, when no wait came for
  ``max_gap`` steps, between two steps.
- :class:`Drift` turns the probe times into the machine's speed at any moment, relative to
  the speed the profile was calibrated at; :func:`step_errors` divides it out of the
  comparison, and :class:`ScaledCost` multiplies a cost model by it for a simulation.

The clocks are parameters, so a test can drive all of it on a synthetic drifting clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.sim.cost import CostModel, chunks_of

STEP_KINDS = ("prefill", "decode", "mixed")
QUIET_CPU_SHARE = 0.9  # as scripts.calibrate.measure.DISTURBED_CPU_SHARE
PROBE_WINDOW = 5  # probes whose median gives the speed at a moment (the nearest ones in time)
NOISE_CELL_MIN = 5  # steps a composition cell needs to count towards the noise floor
AFTER_CHANGE_BINS = (("0", 0, 0), ("1-3", 1, 3), ("4-7", 4, 7), ("8-15", 8, 15), ("16+", 16, 10**9))


def step_kind(prefill: Sequence[Any], decode: Sequence[int]) -> str:
    """``prefill``, ``decode`` or ``mixed`` (both in one step)."""
    if prefill and decode:
        return "mixed"
    return "prefill" if prefill else "decode"


@dataclass(frozen=True)
class StepRecord:
    """One engine step: when it started (``clock`` seconds), how long it took (wall and process
    CPU seconds), what it ran (prefill chunks ``(tokens, cached context)`` and decode contexts)
    and the run it belongs to."""

    start: float
    seconds: float
    cpu_seconds: float
    prefill: tuple[tuple[int, int], ...]
    decode: tuple[int, ...]
    run: str = ""

    @property
    def kind(self) -> str:
        return step_kind(self.prefill, self.decode)

    @property
    def mid(self) -> float:
        return self.start + self.seconds / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "start": self.start,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "prefill": [list(c) for c in self.prefill],
            "decode": list(self.decode),
        }


class DriftProbe:
    """A fixed reference computation (``work``), timed ``repeats`` times back to back each call
    of :meth:`measure`; the fastest of them is one sample ``(clock time, seconds)`` in
    :attr:`samples` (waiting for a core only adds time, so the fastest is the machine's speed
    with the least of that in it). :attr:`cost_s` is what a call costs (for fitting one into
    an idle wait)."""

    def __init__(
        self,
        work: Callable[[], Any],
        clock: Callable[[], float] = time.perf_counter,
        repeats: int = 3,
    ) -> None:
        self.work, self.clock, self.repeats = work, clock, int(repeats)
        self.samples: list[tuple[float, float]] = []
        self.cost_s = 0.0

    def measure(self) -> float:
        t_start = self.clock()
        times = []
        for _ in range(self.repeats):
            t0 = self.clock()
            self.work()
            times.append(self.clock() - t0)
        t_end = self.clock()
        s = min(times)
        self.samples.append(((t_start + t_end) / 2, s))
        self.cost_s = max(self.cost_s, t_end - t_start)
        return s


class StepRecorder:
    """Records every step of ``engine`` while installed (see the module doc).

    ``probe`` (optional): measured by :meth:`idle_sleep` in waits long enough for it, and before
    a step when ``max_gap`` steps ran since the last probe. A probe between steps is the bench's
    instrumentation, not serving: the engine's clock is paused while it runs (the engine's
    ``clock`` becomes its old clock minus :attr:`paused_s`), so request timelines and arrival
    pacing do not contain it (it was ~7% of every inter-token time when it was not paused).
    :attr:`run` labels the records that follow;
    :attr:`update_s` holds how long ``Scheduler.update`` took after each step's tokens were
    stamped (the simulator stamps them at the step's end)."""

    def __init__(
        self,
        engine: Any,
        probe: DriftProbe | None = None,
        *,
        max_gap: int = 32,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.process_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine, self.probe, self.max_gap = engine, probe, int(max_gap)
        self.clock, self.cpu_clock, self.sleep = clock, cpu_clock, sleep
        self.records: list[StepRecord] = []
        self.update_s: list[float] = []
        self.forced_probes = 0
        self.paused_s = 0.0
        self.run = ""
        self._since_probe = 0
        self._out: Any = None
        runner, sched = engine.runner, engine.scheduler
        execute, step = runner.execute, engine.step
        update = getattr(sched, "update", None)

        def recording_execute(out: Any) -> Any:
            self._out = out
            return execute(out)

        def timed_step() -> Any:
            if self.probe is not None and self._since_probe >= self.max_gap:
                p0 = engine_clock()
                self.probe.measure()
                self.paused_s += engine_clock() - p0
                self.forced_probes += 1
                self._since_probe = 0
            self._out = None
            c0, t0 = self.cpu_clock(), self.clock()
            done = step()
            t1, c1 = self.clock(), self.cpu_clock()
            if self._out is not None:
                pre, dec = chunks_of(self._out)
                self.records.append(
                    StepRecord(t0, t1 - t0, c1 - c0, tuple(pre), tuple(dec), self.run)
                )
                self._since_probe += 1
            self._out = None
            return done

        if update is not None:

            def timed_update(*a: Any, **k: Any) -> Any:
                t0 = self.clock()
                try:
                    return update(*a, **k)
                finally:
                    self.update_s.append(self.clock() - t0)

            sched.update = timed_update
        runner.execute = recording_execute
        engine.step = timed_step
        engine_clock = engine.clock
        engine.clock = lambda: engine_clock() - self.paused_s

    def idle_sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a replay waiting for the next arrival), measuring the probe while
        the wait left is more than twice what a probe costs."""
        end = self.clock() + max(0.0, seconds)
        p = self.probe
        while p is not None and end - self.clock() > 2 * max(p.cost_s, 1e-4):
            p.measure()
            self._since_probe = 0
        left = end - self.clock()
        if left > 0:
            self.sleep(left)

    def of_run(self, *runs: str) -> list[StepRecord]:
        return [r for r in self.records if r.run in runs]


@dataclass
class Drift:
    """The machine's speed relative to the profile's calibration, at any moment.

    ``factor(t)`` = ``anchor_ratio * probe(t) / reference_s``: ``probe(t)`` is the median of the
    ``window`` probe samples nearest to ``t``; ``reference_s`` the probe's time at the
    anchor, when reference steps of the engine took ``anchor_ratio`` times what the profile
    predicts for them (1 when the profile was measured at that speed). A factor of 1.2 means
    steps take 20% longer now than the profile says. With ``reference_s = 1`` and samples of
    ``(time, measured over predicted)`` of reference steps, it interpolates those ratios."""

    reference_s: float
    anchor_ratio: float = 1.0
    samples: list[tuple[float, float]] = field(default_factory=list)
    window: int = PROBE_WINDOW

    def __post_init__(self) -> None:
        if not self.reference_s > 0:
            raise ValueError(f"drift reference must be > 0 seconds, got {self.reference_s}")

    def factor(self, t: float) -> float:
        if not self.samples:
            return self.anchor_ratio
        times = np.fromiter((s[0] for s in self.samples), float)
        near = np.argsort(np.abs(times - t), kind="stable")[: self.window]
        probe = float(np.median([self.samples[int(i)][1] for i in near]))
        return self.anchor_ratio * probe / self.reference_s

    def median_factor(self, records: Iterable[StepRecord]) -> float:
        """The median factor over the steps of ``records`` (one run's speed)."""
        fs = [self.factor(r.mid) for r in records]
        return statistics.median(fs) if fs else self.anchor_ratio


class ScaledCost(CostModel):
    """``base``'s step times times ``factor`` (a run's measured drift); its decode runs stay
    element-wise equal to its step times, as the simulator requires."""

    def __init__(self, base: CostModel, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"a cost scale must be > 0, got {factor}")
        self.base, self.factor = base, float(factor)

    def step_time(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        return self.factor * self.base.step_time(prefill_chunks, decode_contexts)

    def decode_run_times(self, context_lens: Sequence[int], k: int) -> np.ndarray:
        return self.factor * np.asarray(self.base.decode_run_times(context_lens, k))


def _summary(pairs: Sequence[tuple[float, float, StepRecord]]) -> dict[str, Any]:
    """MAPE, bias (total predicted over total measured, minus 1) and the worst step."""
    if not pairs:
        return {"steps": 0}
    rel = [(p - m) / m for m, p, _ in pairs]
    worst = int(np.argmax(np.abs(rel)))
    m_tot, p_tot = sum(m for m, _, _ in pairs), sum(p for _, p, _ in pairs)
    w = pairs[worst][2]
    return {
        "steps": len(pairs),
        "mape": statistics.fmean(abs(x) for x in rel),
        "median_abs_error": statistics.median(abs(x) for x in rel),
        "bias": p_tot / m_tot - 1 if m_tot else None,
        "worst_error": rel[worst],
        "worst_step": {
            "measured_s": pairs[worst][0],
            "predicted_s": pairs[worst][1],
            "prefill": [list(c) for c in w.prefill],
            "decodes": len(w.decode),
            "max_context": max(w.decode, default=0),
            "run": w.run,
        },
    }


def composition_cell(r: StepRecord) -> tuple[str, int, int, int]:
    """Steps a composition-only cost model cannot tell apart at the grain used here: kind,
    decode count, prefill tokens to 16 and the longest context to 64."""
    longest = max([c + n for n, c in r.prefill] + list(r.decode), default=0)
    return r.kind, len(r.decode), sum(n for n, _ in r.prefill) // 16, longest // 64


def noise_floor(
    records: Sequence[StepRecord],
    cost: Any = None,
    drift: Drift | None = None,
    min_steps: int = NOISE_CELL_MIN,
) -> dict[str, Any]:
    """Per kind, over the composition cells (:func:`composition_cell`) of at least ``min_steps``
    steps: ``mape``, every step against its cell's median measured time (what a cost model that
    knew each cell's true median would score: the step-to-step jitter no model of the
    composition alone can predict), and with ``cost``, ``cell_mape``: each cell's median
    prediction (times ``drift``) against its median measurement, weighted by steps (the model's
    error once the jitter is averaged out). ``steps`` and ``cells`` counted."""
    cells: dict[tuple[str, int, int, int], list[StepRecord]] = {}
    for r in records:
        if r.seconds > 0:
            cells.setdefault(composition_cell(r), []).append(r)
    out: dict[str, Any] = {}
    for kind in STEP_KINDS:
        errs: list[float] = []
        cell_errs: list[float] = []
        n_cells = 0
        for key, recs in cells.items():
            if key[0] != kind or len(recs) < min_steps:
                continue
            med = statistics.median(r.seconds for r in recs)
            errs += [abs(r.seconds - med) / med for r in recs]
            if cost is not None:
                pred = statistics.median(
                    cost.step_time(r.prefill, r.decode) * (drift.factor(r.mid) if drift else 1.0)
                    for r in recs
                )
                cell_errs += [abs(pred - med) / med] * len(recs)
            n_cells += 1
        if errs:
            out[kind] = {"mape": statistics.fmean(errs), "steps": len(errs), "cells": n_cells}
            if cell_errs:
                out[kind]["cell_mape"] = statistics.fmean(cell_errs)
    return out


def after_change(
    records: Sequence[StepRecord], cost: Any, drift: Drift | None = None
) -> list[dict[str, Any]]:
    """Decode steps by how many steps of the same run had the same composition cell just
    before them (0: the composition changed, e.g. a request joined or left, or a prefill ran):
    the median of measured over predicted minus 1 per bin. A stateless cost model predicts all
    bins alike; a trend says a step's time depends on the steps before it."""
    bins: dict[str, list[float]] = {label: [] for label, _, _ in AFTER_CHANGE_BINS}
    prev: StepRecord | None = None
    same = 0
    for r in records:
        if prev is not None and prev.run == r.run and composition_cell(prev) == composition_cell(r):
            same += 1
        else:
            same = 0
        prev = r
        if r.kind != "decode" or r.seconds <= 0:
            continue
        p = cost.step_time(r.prefill, r.decode) * (drift.factor(r.mid) if drift else 1.0)
        for label, lo, hi in AFTER_CHANGE_BINS:
            if lo <= same <= hi:
                bins[label].append(r.seconds / p - 1)
                break
    return [
        {"steps_unchanged_before": label, "steps": len(v), "median_error": statistics.median(v)}
        for label, v in bins.items()
        if v
    ]


def step_errors(
    records: Sequence[StepRecord], cost: Any, drift: Drift | None = None
) -> dict[str, Any]:
    """The cost model against measured steps, per kind of step and in all: MAPE, bias and the
    worst step; with ``drift``, each prediction times the drift factor at that step
    (``corrected``) beside the raw one; ``quiet``: the steps during which the process had its
    core (CPU time >= 90% of wall time with one thread), corrected."""
    raw: dict[str, list[tuple[float, float, StepRecord]]] = {k: [] for k in STEP_KINDS}
    cor: dict[str, list[tuple[float, float, StepRecord]]] = {k: [] for k in STEP_KINDS}
    quiet: dict[str, list[tuple[float, float, StepRecord]]] = {k: [] for k in STEP_KINDS}
    for r in records:
        if r.seconds <= 0:
            continue
        p = cost.step_time(r.prefill, r.decode)
        raw[r.kind].append((r.seconds, p, r))
        if drift is not None:
            pc = p * drift.factor(r.mid)
            cor[r.kind].append((r.seconds, pc, r))
            if r.cpu_seconds >= QUIET_CPU_SHARE * r.seconds:
                quiet[r.kind].append((r.seconds, pc, r))

    def block(groups: dict[str, list[tuple[float, float, StepRecord]]]) -> dict[str, Any]:
        out = _summary([x for g in groups.values() for x in g])
        out["by_kind"] = {k: _summary(v) for k, v in groups.items() if v}
        return out

    res = {"raw": block(raw)}
    if drift is not None:
        res["corrected"] = block(cor)
        res["quiet_corrected"] = block(quiet)
    res["noise_floor"] = noise_floor(records, cost, drift)
    res["after_change"] = after_change(records, cost, drift)
    return res


def step_pairs(
    records: Sequence[StepRecord], cost: Any, drift: Drift | None = None
) -> list[dict[str, Any]]:
    """Per step: kind, run, measured and predicted seconds (corrected with ``drift``), for the
    figure and the JSON."""
    out = []
    prev: StepRecord | None = None
    for r in records:
        p = cost.step_time(r.prefill, r.decode)
        f = drift.factor(r.mid) if drift is not None else 1.0
        same_run = prev is not None and prev.run == r.run
        out.append(
            {
                "run": r.run,
                "kind": r.kind,
                "start_s": r.start,
                # idle time since the previous step of the same run ended (None for a run's first)
                "gap_s": r.start - (prev.start + prev.seconds) if same_run and prev else None,
                "tokens": sum(n for n, _ in r.prefill) + len(r.decode),
                "prefill_tokens": sum(n for n, _ in r.prefill),
                "decodes": len(r.decode),
                "max_context": max([c + n for n, c in r.prefill] + list(r.decode), default=0),
                "measured_s": r.seconds,
                "predicted_s": p * f,
                "predicted_raw_s": p,
                "cpu_share": r.cpu_seconds / r.seconds if r.seconds > 0 else None,
            }
        )
        prev = r
    return out


def linear_probe(model: Any, rows: int = 8) -> Callable[[], None]:
    """A reference computation on ``model``'s own weights: every linear layer and the LM head on
    ``rows`` rows (fixed inputs). It streams the weights as a decode step does, so it slows
    down with the engine when the machine does (memory bandwidth, clock, a shared core)."""
    import torch

    from core.kernels.linear import Linear

    gen = torch.Generator().manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, Linear) and m is not model.lm_head]
    inputs = [torch.randn(rows, m.in_features, generator=gen).to(model.dtype) for m in layers]
    head_in = torch.randn(rows, model.config.hidden_size, generator=gen).to(model.dtype)

    def work() -> None:
        with torch.inference_mode():
            for m, x in zip(layers, inputs, strict=True):
                m(x)
            model.compute_logits(head_in)

    return work


class StepRecorderCost(CostModel):
    """``base`` that also keeps every step it is asked about, as a :class:`StepRecord` with the
    predicted seconds (``run="sim"``): the simulator's own batching decisions, step by step
    (run it with ``fast_forward=False``: a decode run is asked about in one call)."""

    def __init__(self, base: CostModel) -> None:
        self.base = base
        self.records: list[StepRecord] = []

    def step_time(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        t = self.base.step_time(prefill_chunks, decode_contexts)
        pre = tuple((int(n), int(c)) for n, c in prefill_chunks)
        self.records.append(
            StepRecord(0.0, t, 0.0, pre, tuple(int(c) for c in decode_contexts), "sim")
        )
        return t
