"""The event queue's order and clock, and EpochWork's progress <-> seconds arithmetic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.jobsim import EpochWork, EventQueue


def test_events_pop_by_time_then_order_then_push_order():
    q = EventQueue()
    q.push(2.0, "late")
    q.push(1.0, "timeout", order=3)
    q.push(1.0, "arrival-a", order=1)
    q.push(1.0, "block", order=0)
    q.push(1.0, "arrival-b", order=1)
    kinds = [q.pop().kind for _ in range(5)]
    assert kinds == ["block", "arrival-a", "arrival-b", "timeout", "late"]
    assert q.now == 2.0 and not q and q.peek_time() == math.inf


def test_events_refuse_the_past_and_non_finite_times():
    q = EventQueue()
    q.push(5.0, "x")
    q.pop()
    with pytest.raises(ValueError, match="before the clock"):
        q.push(4.0, "y")
    with pytest.raises(ValueError, match="non-finite"):
        q.push(math.inf, "z")


def test_epoch_work_advances_through_epochs_of_different_lengths():
    w = EpochWork({"v100": [10.0, 20.0, 5.0]}, batch_sizes=[32, 64, 64])
    assert w.total_seconds("v100") == 35.0
    p, used = w.advance(0.0, "v100", 15.0)  # epoch 0 (10 s) + a quarter of epoch 1
    assert (p, used) == (1.25, 15.0) and w.batch_size_at(p) == 64
    assert w.remaining_seconds(p, "v100") == pytest.approx(20.0)
    p, used = w.advance(p, "v100", 100.0)
    assert (p, used) == (3.0, pytest.approx(20.0))


@given(
    st.lists(st.floats(0.1, 100.0), min_size=1, max_size=20),
    st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30),
)
def test_epoch_work_spends_exactly_its_total(epochs, chunks):
    w = EpochWork({"k80": epochs})
    p, spent = 0.0, 0.0
    for c in chunks:
        p, used = w.advance(p, "k80", c)
        assert 0.0 <= used <= c + 1e-9
        spent += used
        assert w.seconds_at(p, "k80") == pytest.approx(spent, rel=1e-9, abs=1e-9)
    if p < w.epochs:  # not done: every second was used
        assert spent == pytest.approx(sum(chunks), rel=1e-9, abs=1e-9)
    else:
        assert spent == pytest.approx(w.total_seconds("k80"), rel=1e-9)


def test_epoch_work_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same, non-zero"):
        EpochWork({"a": [1.0], "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="> 0"):
        EpochWork({"a": [1.0, 0.0]})
