"""The roofline model's fast path: equal to the operator list (``step_time_reference``) on
random batches, and ``decode_run_times`` bit-identical to ``step_time_for`` of each step."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model.spec import Operator, OpKind, preset_names
from core.sched.scheduler import ScheduledChunk, SchedulerOutput
from core.sim.cost import CostModel, Efficiency, RooflineCostModel, _combine_arrays, combine

MODELS = {}


def model(name, hw="h100-sxm", tp=1, blend=None):
    key = (name, hw, tp, blend)
    if key not in MODELS:
        eff = None if blend is None else Efficiency(ridge_blend=blend)
        MODELS[key] = RooflineCostModel(name, hw, tp=tp, efficiency=eff)
    return MODELS[key]


# dense, sliding window, MoE, q/k-norm, q/k/v bias, hybrid SSM, NemotronH MoE hybrid
NAMES = [
    "llama-3-8b",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen3-8b",
    "qwen2-7b",
    "bamba-9b",
    "tiny-nemotron-h",
]
CONFIGS = [
    (n, hw, tp, b)
    for n in NAMES
    for hw, tp, b in (("h100-sxm", 1, None), ("a100-80g", 2, 0.0), ("h100-sxm", 4, 0.35))
]


def valid(cfg):
    try:
        model(*cfg)
    except ValueError:  # e.g. Mixtral does not fit on one GPU
        return False
    return True


VALID = [c for c in CONFIGS if valid(c)]

contexts = st.one_of(st.integers(0, 40), st.integers(4000, 4200), st.integers(0, 30000))
chunks = st.lists(st.tuples(st.integers(1, 5000), contexts), max_size=4)
decodes = st.lists(contexts, max_size=40)


def test_every_preset_gets_the_fast_path():
    for name in preset_names():
        for tp in (1, 2, 8):
            try:
                m = RooflineCostModel(name, "h100-sxm", tp=tp)
            except ValueError:
                continue
            assert m.fast_path, (name, tp, m.fast_path_reason)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=st.sampled_from(VALID), prefill=chunks, decode=decodes)
def test_fast_path_equals_the_operator_list(cfg, prefill, decode):
    m = model(*cfg)
    fast, slow = m.step_time(prefill, decode), m.step_time_reference(prefill, decode)
    assert fast == pytest.approx(slow, rel=1e-9, abs=0.0)
    out = SchedulerOutput(
        chunks=[ScheduledChunk(None, c, n, True) for n, c in prefill]
        + [ScheduledChunk(None, c, 1, True) for c in decode]
    )
    assert m.step_time_for(out) == fast or (not prefill and not decode)
    assert CostModel.step_time_for(m, out) == m.step_time_for(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=st.sampled_from(VALID),
    ctx=st.lists(contexts, min_size=1, max_size=30),
    k=st.integers(1, 300),
)
def test_decode_run_times_are_each_steps_time_exactly(cfg, ctx, k):
    m = model(*cfg)
    times = m.decode_run_times(ctx, k)
    assert isinstance(times, np.ndarray) and times.shape == (k,)
    for i in sorted({0, min(1, k - 1), k // 2, k - 1}):
        out = SchedulerOutput(chunks=[ScheduledChunk(None, c + i, 1, True) for c in ctx])
        assert times[i] == m.step_time_for(out)  # bit-identical, not approx
    base = CostModel.decode_run_times(m, ctx, min(k, 5))
    assert list(base) == list(times[: len(base)])


def test_combine_arrays_is_combine_elementwise():
    rng = np.random.default_rng(0)
    tc = np.exp(rng.uniform(-20, -2, 2000))
    tm = np.exp(rng.uniform(-20, -2, 2000))
    tc[:5] = 0.0
    tm[3:8] = 0.0
    for b in (0.0, 0.35, 0.7, 1.0):
        got = _combine_arrays(tc, tm, b)
        want = [combine(c, t, b) for c, t in zip(tc.tolist(), tm.tolist(), strict=True)]
        assert got.tolist() == want


def test_the_reference_is_the_operator_list():
    m = model("llama-3-8b")
    batch = ([(300, 0), (256, 512)], [900, 5])
    ops = m.per_layer_times(*batch)
    assert (
        m.step_time_reference(*batch) == sum(o.seconds for o in ops) + m.efficiency.step_overhead_s
    )
    assert m.step_time_reference() == m.step_time() == 0.0
    with pytest.raises(ValueError, match="token counts must be >= 0"):
        m.step_time([(-1, 0)])


def test_a_nonlinear_operator_list_keeps_the_slow_path():
    class Quadratic(RooflineCostModel):
        def operators(self, prefill_chunks=(), decode_contexts=()):
            ops = super().operators(prefill_chunks, decode_contexts)
            if not ops:
                return ops
            T = sum(n for n, _ in prefill_chunks) + len(decode_contexts)
            return [*ops, Operator("quadratic", OpKind.ELEMENTWISE, 1e6 * T * T, 8.0 * T, 0.0)]

    m = Quadratic("llama-3-8b", "h100-sxm")
    assert not m.fast_path and "quadratic" in m.fast_path_reason
    assert m.step_time([(700, 3)], [5]) == m.step_time_reference([(700, 3)], [5])
    out = SchedulerOutput(
        chunks=[ScheduledChunk(None, 5, 1, True), ScheduledChunk(None, 9, 1, True)]
    )
    assert m.decode_run_times([5, 9], 3)[0] == m.step_time_for(out)


def test_new_efficiency_factors_rebuild_the_fast_path():
    m = RooflineCostModel("llama-3-8b", "h100-sxm", efficiency=Efficiency())
    before = m.step_time([], [100, 200])
    m.efficiency = replace(m.efficiency, memory=0.4)
    after = m.step_time([], [100, 200])
    assert after > before and after == pytest.approx(
        m.step_time_reference([], [100, 200]), rel=1e-12
    )


def test_fast_path_builds_no_operators(monkeypatch):
    """The fast path's point is to skip the operator list; count that work instead of timing it
    (a timed assertion flips with the machine's load)."""
    m = model("llama-3-8b")
    assert m.fast_path
    rng = random.Random(0)
    batches = [[rng.randint(1, 4000) for _ in range(64)] for _ in range(20)]
    calls = []
    original = type(m).per_layer_times
    monkeypatch.setattr(
        type(m), "per_layer_times", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    for b in batches:
        assert math.isfinite(m.step_time([], b))
    assert calls == []
    m.step_time_reference([], batches[0])
    assert calls == [1]
