"""Round schedules: matchings within link capacity that deliver every byte; the lower bound
below every ordering; Aurora's ordering at the bound; the baselines' hand-computed times."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.alltoall import rounds as R
from core.alltoall.rounds import Round, RoundSchedule


@st.composite
def networks(draw):
    n = draw(st.integers(2, 6))
    sparse = draw(st.booleans())
    values = st.one_of(st.just(0.0), st.floats(1.0, 1e6)) if sparse else st.floats(0.0, 1e6)
    d = draw(arrays(float, (n, n), elements=values))
    homog = draw(st.booleans())
    bw_el = st.sampled_from([1.0, 2.0, 5.0]) if not homog else st.just(3.0)
    bw = draw(arrays(float, (n,), elements=bw_el))
    np.fill_diagonal(d, 0.0)
    return d, bw


@settings(max_examples=60, deadline=None)
@given(networks())
def test_matching_rounds_respect_capacity_deliver_everything_and_meet_the_bound(net):
    d, bw = net
    sched = R.matching_schedule(d, bw)
    R.check_schedule(sched, d, bw)
    lb = R.lower_bound(d, bw)
    assert sched.time == pytest.approx(lb, rel=1e-9, abs=1e-12)
    assert len(sched.rounds) <= 4 * len(bw) ** 2


@settings(max_examples=60, deadline=None)
@given(networks(), st.integers(0, 2**31))
def test_no_ordering_beats_the_lower_bound(net, seed):
    d, bw = net
    lb = R.lower_bound(d, bw)
    rot = R.rotation_schedule(d, bw)
    R.check_schedule(rot, d, bw)
    assert rot.time >= lb * (1 - 1e-9)
    assert R.random_order_time(d, bw, rng=np.random.default_rng(seed)) >= lb * (1 - 1e-9)
    # several peers at once: only the port bound holds
    fair = R.fair_share_time(d, bw)
    assert fair >= R.port_bound(d, bw) * (1 - 1e-9)
    assert R.port_bound(d, bw) <= lb * (1 + 1e-12)


def test_hand_computed_times():
    # GPU 0 sends 4 to GPU 1 and 2 to GPU 2; GPU 1 sends 2 to GPU 2; 1 B/s everywhere
    d = np.array([[0, 4, 2], [0, 0, 2], [0, 0, 0]], dtype=float)
    bw = np.ones(3)
    assert R.lower_bound(d, bw) == 6.0  # GPU 0 sends 6; GPU 2 receives 4
    # rotation: k=1 pairs 0->1 (4) and 1->2 (2): 4 s; k=2 pairs 0->2 (2): 2 s
    assert R.rotation_schedule(d, bw).time == 6.0
    # fair share: 0->1 and 0->2 split GPU 0; 1->2 shares GPU 2 with 0->2 -> all at 0.5 until
    # 0->2 and 1->2 end at 4 s (2 B each); then 0->1 has 2 B left at full rate: 6 s
    assert R.fair_share_time(d, bw) == pytest.approx(6.0)
    # incast: three senders into one receiver take their sum however they are ordered
    inc = np.zeros((4, 4))
    inc[1:, 0] = [1.0, 2.0, 3.0]
    assert R.lower_bound(inc, np.ones(4)) == 6.0
    assert R.matching_schedule(inc, np.ones(4)).time == pytest.approx(6.0)


def test_rotation_waits_for_the_slowest_pair_of_each_round():
    d = np.zeros((4, 4))
    d[0, 1], d[1, 2] = 8.0, 8.0  # both in round k=1
    d[2, 0] = 8.0  # round k=2
    # the bound is 8 (one transfer per port) and a matching does both rounds' worth at once
    assert R.rotation_schedule(d, np.ones(4)).time == 16.0
    assert R.matching_schedule(d, np.ones(4)).time == pytest.approx(8.0)


def test_heterogeneous_pairs_run_at_the_slower_port():
    d = np.array([[0, 10.0], [0, 0]])
    assert R.lower_bound(d, np.array([10.0, 2.0])) == 5.0
    sched = R.matching_schedule(d, np.array([10.0, 2.0]))
    assert sched.time == pytest.approx(5.0)
    R.check_schedule(sched, d, np.array([10.0, 2.0]))


def test_the_checker_catches_incast_overload_and_lost_bytes():
    d = np.array([[0, 1.0, 0], [0, 0, 0], [1.0, 0, 0]])
    bw = np.ones(3)
    incast = RoundSchedule([Round(1.0, ((0, 1, 1.0), (2, 1, 0.0)))])
    with pytest.raises(ValueError, match="receives twice"):
        R.check_schedule(incast, d, bw)
    over = RoundSchedule([Round(0.5, ((0, 1, 1.0), (2, 0, 1.0)))])
    with pytest.raises(ValueError, match="more than"):
        R.check_schedule(over, d, bw)
    lost = RoundSchedule([Round(1.0, ((0, 1, 1.0),))])
    with pytest.raises(ValueError, match="delivered 0 of 1"):
        R.check_schedule(lost, d, bw)


@pytest.mark.parametrize(
    ("d", "bw", "msg"),
    [
        (np.zeros((2, 3)), np.ones(2), "square"),
        (np.zeros((2, 2)), np.ones(3), "one value per GPU"),
        (np.array([[0, -1.0], [0, 0]]), np.ones(2), ">= 0"),
        (np.zeros((2, 2)), np.array([1.0, 0.0]), "> 0"),
    ],
)
def test_bad_input_is_named(d, bw, msg):
    with pytest.raises(ValueError, match=msg):
        R.lower_bound(d, bw)
