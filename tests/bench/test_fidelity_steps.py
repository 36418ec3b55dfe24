"""Step-level fidelity: the recorder sees exactly the steps the scheduler decided, and the drift
correction removes a machine's changing speed on a synthetic drifting clock."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.sim.cost import CostModel, chunks_of
from scripts.bench.fidelity_steps import (
    Drift,
    DriftProbe,
    ScaledCost,
    StepRecord,
    StepRecorder,
    after_change,
    composition_cell,
    noise_floor,
    step_errors,
    step_kind,
)

# ---- the recorder on the real engine --------------------------------------------------------


def test_recorder_records_equal_the_schedulers_decisions():
    from core.workload import Request
    from scripts.bench.fidelity_steps import linear_probe
    from scripts.calibrate import MODELS, EngineSettings, build_llm

    settings = EngineSettings(
        num_kv_blocks=64, max_num_batched_tokens=24, max_num_seqs=3, max_model_len=512
    )
    llm = build_llm(MODELS["tiny-llama-smoke"], settings, device="cpu")
    engine = llm.engine
    decided = []
    schedule = engine.scheduler.schedule

    def spy(*a, **k):  # what the scheduler decided, independently of the recorder
        out = schedule(*a, **k)
        if not out.is_empty:
            decided.append(chunks_of(out))
        return out

    engine.scheduler.schedule = spy
    linear_probe(llm.model, rows=2)()  # the real probe runs on the model's own layers
    probe = DriftProbe(lambda: sum(range(1000)))  # a cheap one here: it must fit idle waits
    probe.measure()
    rec = StepRecorder(engine, probe, max_gap=4)
    rec.run = "stream"
    rng = np.random.default_rng(0)
    reqs = [
        Request(f"r{i}", 0.2 * (i // 3), n, m, prompt_token_ids=rng.integers(3, 500, n).tolist())
        for i, (n, m) in enumerate([(40, 3), (5, 6), (17, 2), (30, 4), (2, 5), (9, 1)])
    ]
    from core.engine import replay

    done = replay(engine, reqs, sleep=rec.idle_sleep)
    assert all(r.is_finished for r in done)
    got = [(list(r.prefill), list(r.decode)) for r in rec.records]
    assert got == decided and len(got) > 6
    assert {r.kind for r in rec.records} >= {"prefill", "mixed"}  # a 40-token prompt is chunked
    assert all(r.run == "stream" and r.seconds > 0 for r in rec.records)
    # probes forced between steps (idle waits, if the machine left any, add more: the
    # synthetic-clock test below checks those)
    assert rec.forced_probes >= len(rec.records) // 5 > 0
    assert len(probe.samples) >= rec.forced_probes + 1
    assert len(rec.update_s) == len(rec.records)


# ---- drift correction on a synthetic clock ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def speed(t: float) -> float:
    """The machine's slowdown at time t: a ramp from 1.0 to 1.5 over 5 s, then a jump to 1.8."""
    return 1.0 + 0.1 * min(t, 5.0) + (0.3 if t > 5.0 else 0.0)


class LinearCost(CostModel):
    """1 ms per step plus 0.1 ms per token: the 'profile' at calibration speed."""

    def step_time(self, prefill_chunks=(), decode_contexts=()):
        n = sum(k for k, _ in prefill_chunks) + len(decode_contexts)
        return 0.0 if n == 0 else 1e-3 + 1e-4 * n


def chunk(n: int, start: int) -> SimpleNamespace:
    return SimpleNamespace(num_tokens=n, start=start)


class FakeEngine:
    """Steps whose true time is the profile's times the clock's slowdown."""

    def __init__(self, clock: FakeClock, cost: CostModel, plan: list) -> None:
        self.wall, self.cost, self.plan = clock, cost, list(plan)
        self.clock = clock  # what the engine reads (the recorder pauses it during probes)
        self.runner = SimpleNamespace(execute=lambda out: None)
        self.scheduler = SimpleNamespace(update=lambda *a, **k: [])

    def step(self):
        out = SimpleNamespace(chunks=self.plan.pop(0))
        self.runner.execute(out)
        pre, dec = chunks_of(out)
        self.wall.advance(self.cost.step_time(pre, dec) * speed(self.wall.t))
        self.scheduler.update(out, {}, self.clock())
        return []


def drifting_run(anchor_ratio: float = 1.0):
    clock, cost = FakeClock(), LinearCost()
    rng = np.random.default_rng(1)
    plan = []
    for i in range(1000):
        b = int(rng.integers(1, 40))
        steps = [chunk(1, 100 + i)] * b  # decodes
        if i % 3 == 0:
            steps = [chunk(int(rng.integers(2, 300)), 0), *steps]  # mixed
        if i % 7 == 0:
            steps = [chunk(int(rng.integers(2, 300)), 0)]  # prefill
        plan.append(steps)
    engine = FakeEngine(clock, cost, plan)
    p_ref = 2e-3

    def work():  # the probe: 2 ms at calibration speed, slowed like the steps
        clock.advance(p_ref * speed(clock.t))

    probe = DriftProbe(work, clock=clock)
    rec = StepRecorder(engine, probe, max_gap=16, clock=clock, cpu_clock=clock, sleep=clock.advance)
    for _ in range(len(plan)):
        engine.step()
        # the anchor: reference steps took ``anchor_ratio`` x the profile when the probe took
    # ``anchor_ratio`` x p_ref (the machine ran that much slower then)
    return rec, cost, Drift(p_ref * anchor_ratio, anchor_ratio, probe.samples)


def test_drift_correction_removes_a_drifting_machine_speed():
    rec, cost, drift = drifting_run()
    assert rec.records[-1].start > 5.0  # the run crossed the jump
    res = step_errors(rec.records, cost, drift)
    raw, cor = res["raw"], res["corrected"]
    assert raw["mape"] > 0.2 and raw["bias"] < -0.2  # the profile alone is 20-45% too fast
    assert cor["mape"] < 0.03 and abs(cor["bias"]) < 0.01
    assert set(cor["by_kind"]) == {"prefill", "decode", "mixed"}
    for kind, s in cor["by_kind"].items():
        assert s["mape"] < 0.03, kind
    # the worst step is next to the jump (a 20% step), where the nearest probes straddle it
    assert abs(cor["worst_error"]) <= 0.21
    assert res["quiet_corrected"]["steps"] == len(rec.records)  # CPU time == wall time here


def test_the_anchor_ratio_scales_the_probe_reference():
    rec, cost, drift = drifting_run(anchor_ratio=1.25)
    assert 1.0 <= drift.factor(0.0) <= 1.06  # the speed near the start, not 1.25
    assert step_errors(rec.records, cost, drift)["corrected"]["mape"] < 0.03
    wrong = Drift(drift.reference_s, 1.0, drift.samples)  # the anchor ignored: 20% too fast
    assert step_errors(rec.records, cost, wrong)["corrected"]["bias"] < -0.15


def test_idle_sleep_fills_the_wait_with_probes_and_ends_on_time():
    clock = FakeClock()
    probe = DriftProbe(lambda: clock.advance(0.01), clock=clock)
    engine = FakeEngine(clock, LinearCost(), [])
    rec = StepRecorder(engine, probe, clock=clock, sleep=clock.advance)
    probe.measure()
    t_end = clock.t + 1.0
    rec.idle_sleep(1.0)
    assert clock.t == pytest.approx(t_end)
    assert 30 <= len(probe.samples) <= 34  # 3 x 10 ms each, while > 2 x 30 ms are left
    assert all(s == pytest.approx(0.01) for _, s in probe.samples)


def test_scaled_cost_keeps_decode_runs_equal_to_steps():
    base = LinearCost()
    scaled = ScaledCost(base, 1.3)
    assert scaled.step_time([(10, 0)], [5]) == pytest.approx(1.3 * base.step_time([(10, 0)], [5]))
    runs = scaled.decode_run_times([4, 9, 2], 5)
    steps = [scaled.step_time([], [4 + i, 9 + i, 2 + i]) for i in range(5)]
    assert runs.tolist() == pytest.approx(steps, rel=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        ScaledCost(base, 0.0)
    with pytest.raises(ValueError, match="reference"):
        Drift(0.0)


def test_step_kind():
    assert step_kind([(3, 0)], []) == "prefill"
    assert step_kind([], [5]) == "decode"
    assert step_kind([(3, 0)], [5]) == "mixed"


def _rec(seconds: float, decode: tuple[int, ...] = (), prefill=(), run: str = "s") -> StepRecord:
    return StepRecord(0.0, seconds, seconds, tuple(prefill), tuple(decode), run)


def test_noise_floor_is_the_jitter_around_each_compositions_median():
    # two decode cells: +-10% around 1 ms and +-20% around 4 ms; a cell of 2 steps is too small
    recs = [_rec(s, (100,)) for s in (0.9e-3, 1.0e-3, 1.1e-3, 1.0e-3, 1.0e-3)]
    recs += [_rec(s, (100, 100, 100)) for s in (3.2e-3, 4.8e-3, 4.0e-3, 4.0e-3, 4.0e-3)]
    recs += [_rec(5.0, (900,)), _rec(1.0, (900,))]
    recs += [_rec(2e-3, prefill=((64, 0),))] * 5
    floor = noise_floor(recs)
    assert floor["decode"]["cells"] == 2 and floor["decode"]["steps"] == 10
    assert floor["decode"]["mape"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.2) / 10)
    assert floor["prefill"] == {"mape": 0.0, "steps": 5, "cells": 1}
    assert "mixed" not in floor
    # with a cost model: each cell's median prediction against its median measurement
    cost = LinearCost()  # 1.1 ms for one decode, 1.3 ms for three, 7.4 ms for the prefill
    cells = noise_floor(recs, cost)
    assert cells["decode"]["mape"] == floor["decode"]["mape"]
    assert cells["decode"]["cell_mape"] == pytest.approx((0.1 + (4.0 - 1.3) / 4.0) / 2)
    assert cells["prefill"]["cell_mape"] == pytest.approx((7.4 - 2.0) / 2.0)


def test_after_change_bins_decode_steps_by_the_unchanged_steps_before_them():
    cost = LinearCost()
    one, two = (100,), (100, 100)
    # each composition change costs 50% on its first step, then the steps run as predicted
    plan = [one] * 6 + [two] * 20 + [one] * 3
    recs, prev = [], None
    for dec in plan:
        t = cost.step_time([], dec) * (1.5 if dec != prev else 1.0)
        recs.append(_rec(t, dec))
        prev = dec
    recs.append(_rec(cost.step_time([], one) * 1.5, one, run="other"))  # a new run: changed
    bins = {b["steps_unchanged_before"]: b for b in after_change(recs, cost)}
    assert bins["0"]["steps"] == 4 and bins["0"]["median_error"] == pytest.approx(0.5)
    assert bins["1-3"]["steps"] == 3 + 3 + 2
    assert bins["16+"]["steps"] == 4 and bins["16+"]["median_error"] == pytest.approx(0.0)
    assert composition_cell(recs[0]) != composition_cell(recs[6])


def test_a_probe_between_steps_pauses_the_engines_clock():
    clock = FakeClock()
    engine = FakeEngine(clock, LinearCost(), [[chunk(1, 10)]] * 10)
    probe = DriftProbe(lambda: clock.advance(0.01), clock=clock, repeats=1)
    rec = StepRecorder(engine, probe, max_gap=3, clock=clock, cpu_clock=clock)
    for _ in range(10):
        engine.step()
    assert rec.forced_probes == 3  # before steps 4, 7 and 10
    assert rec.paused_s == pytest.approx(0.03)
    steps_s = sum(r.seconds for r in rec.records)
    assert clock.t == pytest.approx(steps_s + 0.03)  # the wall clock saw the probes
    assert engine.clock() == pytest.approx(steps_s)  # the engine's timeline did not
