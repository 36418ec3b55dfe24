"""Placement invariants, the layer-time model on hand-computed cases, the co-location overlap,
and the exact ILP against brute force on tiny instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from artifacts.aurora.ilp import solve_placement
from artifacts.aurora.placement import (
    Cluster,
    MoELayer,
    Phases,
    colocated_placement,
    colocated_time,
    compute_time,
    identity_placement,
    load_speed_placement,
    phases,
)
from core.alltoall import (
    dispatch_bytes,
    zipf_routing,
)


def _cluster(speeds, bws, slots=1):
    return Cluster(tuple(float(s) for s in speeds), tuple(float(b) for b in bws), slots)


@settings(max_examples=30, deadline=None)
@given(
    arrays(float, (4, 8), elements=st.floats(0, 100)),
    st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=4, max_size=4),
    st.sampled_from([1, 2]),
)
def test_load_speed_placement_fills_every_slot_and_puts_heavy_experts_on_fast_gpus(r, sp, slots):
    r = r[:, : 4 * slots]
    cl = _cluster(sp, [1.0] * 4, slots)
    p = load_speed_placement(r, cl)
    assert np.bincount(p, minlength=4).tolist() == [slots] * 4
    if slots == 1:  # one per GPU: sorted matching, optimal for the slowest GPU's compute
        loads = r.sum(axis=0)
        layer = MoELayer(r, 1.0, 1.0)
        best = min(compute_time(layer, q, cl) for q in itertools.permutations(range(4)))
        assert compute_time(layer, p, cl) == pytest.approx(best)
        heavy, light = int(loads.argmax()), int(loads.argmin())
        assert cl.speed[p[heavy]] >= cl.speed[p[light]]


def test_dispatch_bytes_skip_local_tokens_and_follow_the_placement():
    r = np.array([[1.0, 2.0], [3.0, 4.0]])
    d = dispatch_bytes(r, [1, 0], 2, bytes_per_token=10.0)
    # expert 0 on GPU 1: GPU 0's 1 token crosses; expert 1 on GPU 0: GPU 1's 4 tokens cross
    assert d.tolist() == [[0.0, 10.0], [40.0, 0.0]]
    with pytest.raises(ValueError, match="outside 0..1"):
        dispatch_bytes(r, [0, 2], 2, 10.0)


def test_layer_phases_and_colocation_by_hand():
    r = np.array([[0.0, 4.0], [4.0, 0.0]])  # every token crosses
    layer = MoELayer(r, bytes_per_token=1.0, flops_per_token=1.0)
    cl = _cluster([2.0, 2.0], [1.0, 1.0])
    ph = phases(layer, [0, 1], cl)
    assert (ph.dispatch, ph.compute, ph.combine) == (4.0, 2.0, 4.0)
    assert ph.alone == 10.0
    # co-located with a copy: 4 + max(2, 4) + max(4, 2) + 4 = 16 < 10 + 10
    assert colocated_time(ph, ph) == 16.0
    # compute-bound models overlap everything but the first and last all-to-all
    a = Phases(1.0, 5.0, 1.0)
    assert colocated_time(a, a) == 1 + 5 + 5 + 1


def test_placement_on_fast_gpus_beats_the_identity_on_a_heterogeneous_cluster():
    rng = np.random.default_rng(1)
    r = zipf_routing(4, 4, 256, skew=1.2, rng=rng)
    cl = _cluster([4.0, 1.0, 1.0, 1.0], [4.0, 1.0, 1.0, 1.0])
    layer = MoELayer(r, 1.0, 1.0)
    ident = phases(layer, identity_placement(4, cl), cl).alone
    ours = phases(layer, load_speed_placement(r, cl), cl).alone
    assert ours <= ident


def _brute(layers, cl):
    perms = list(itertools.permutations(range(cl.gpus)))
    if len(layers) == 1:
        return min(phases(layers[0], p, cl).alone for p in perms)
    return min(
        colocated_time(phases(layers[0], pa, cl), phases(layers[1], pb, cl))
        for pa in perms
        for pb in perms
    )


@pytest.mark.parametrize("models", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ilp_equals_brute_force_on_tiny_instances(models, seed):
    rng = np.random.default_rng(seed)
    cl = _cluster(rng.choice([1.0, 2.0, 3.0], 3), rng.choice([1.0, 2.0], 3))
    layers = [
        MoELayer(zipf_routing(3, 3, 20, skew=1.0, rng=rng), 1.0, float(rng.uniform(0.2, 2.0)))
        for _ in range(models)
    ]
    want = _brute(layers, cl)
    res = solve_placement(layers, cl, time_limit=30.0, scale=want)
    assert res.optimal and res.placements is not None
    assert res.objective == pytest.approx(want, rel=1e-6)
    # the placements it returns achieve the objective it reports
    got = [phases(layer, p, cl) for layer, p in zip(layers, res.placements, strict=True)]
    t = got[0].alone if models == 1 else colocated_time(got[0], got[1])
    assert t == pytest.approx(want, rel=1e-6)
    if models == 2:  # the heuristic is never better than the optimum
        pa, pb = colocated_placement(layers[0], layers[1], cl)
        h = colocated_time(phases(layers[0], pa, cl), phases(layers[1], pb, cl))
        assert h >= want * (1 - 1e-9)


def test_the_ilp_time_limit_returns_a_bound():
    rng = np.random.default_rng(0)
    n = 8
    cl = _cluster(rng.choice([1.0, 2.0, 3.0], n), rng.choice([1.0, 2.0], n))
    layers = [MoELayer(zipf_routing(n, n, 200, skew=1.0, rng=rng), 1.0, 0.5) for _ in range(2)]
    res = solve_placement(layers, cl, time_limit=0.05, scale=100.0)
    assert res.bound <= res.objective * (1 + 1e-9)
    assert res.optimal or "time limit" in res.status.lower()


def test_mismatched_sizes_are_named():
    with pytest.raises(ValueError, match="do not fill"):
        identity_placement(5, _cluster([1, 1], [1, 1], slots=2))
    with pytest.raises(ValueError, match="one speed and one bandwidth"):
        _cluster([1.0], [1.0, 2.0])
