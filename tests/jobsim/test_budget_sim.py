"""The privacy-budget simulator: budgets never overdrawn, grants all or nothing, timeouts, Renyi
accounting, and deterministic runs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.jobsim import (
    GRANTED,
    PENDING,
    RDP_ORDERS,
    TIMED_OUT,
    BlockArrival,
    BudgetView,
    InvalidDecision,
    Pipeline,
    PrivacyBlock,
    gaussian_rdp_demand,
    rdp_capacity,
    simulate_budget,
)


class GreedyFits:
    """Grants, in arrival order, every waiting pipeline whose blocks all have room."""

    name = "greedy"

    def schedule(self, view: BudgetView) -> list[int]:
        taken: dict[int, list[float]] = {}
        out = []
        for p in view.waiting.values():
            ok = True
            for j in p.blocks:
                b = view.blocks[j]
                spent = taken.get(j, b.spent)
                probe = PrivacyBlock(j, 0.0, b.capacity, list(spent))
                ok = ok and probe.fits(p.demand)
            if ok:
                for j in p.blocks:
                    spent = list(taken.get(j, view.blocks[j].spent))
                    taken[j] = [s + d for s, d in zip(spent, p.demand, strict=True)]
                out.append(p.pid)
        return out


class GrantEverything:
    name = "reckless"

    def schedule(self, view: BudgetView) -> list[int]:
        return list(view.waiting)


pipelines_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 50.0),  # arrival
        st.integers(1, 3),  # how many latest blocks
        st.sampled_from([0.01, 0.1, 0.3]),  # epsilon
        st.floats(1.0, 30.0),  # timeout
    ),
    max_size=60,
)


def _workload(raw):
    blocks = [BlockArrival(j, 10.0 * j, (1.0,)) for j in range(6)]
    pipes = []
    for pid, (t, n, eps, to) in enumerate(sorted(raw)):
        latest = min(int(t // 10), 5)
        pipes.append(Pipeline(pid, t, tuple(range(max(0, latest - n + 1), latest + 1)), (eps,), to))
    return blocks, pipes


@settings(max_examples=60, deadline=None)
@given(pipelines_strategy)
def test_budgets_never_overdrawn_and_grants_all_or_nothing(raw):
    blocks, pipes = _workload(raw)
    run = simulate_budget(GreedyFits(), blocks, pipes, until=80.0)
    by_id = {p.pid: p for p in pipes}
    spent = dict.fromkeys(run.blocks, 0.0)
    for r in run.records:
        if r.status == GRANTED:
            assert r.finish is not None and r.finish >= r.arrival
            for j in by_id[r.job_id].blocks:  # the whole demand on every block
                spent[j] += by_id[r.job_id].demand[0]
        else:
            assert r.finish is None
    for j, b in run.blocks.items():
        assert b.spent[0] == pytest.approx(spent[j])
        assert b.spent[0] <= b.capacity[0] + 1e-9
    # timed-out pipelines waited their full timeout
    for r in run.records:
        if r.status == TIMED_OUT:
            assert r.arrival + by_id[r.job_id].timeout <= 80.0


def test_an_overdrawing_scheduler_is_stopped():
    blocks = [BlockArrival(0, 0.0, (1.0,))]
    pipes = [Pipeline(i, 1.0 + i, (0,), (0.4,)) for i in range(3)]
    with pytest.raises(InvalidDecision, match="reckless: pipeline 2 .* lack budget"):
        simulate_budget(GrantEverything(), blocks, pipes, until=10.0)


def test_timeouts_and_pending_at_the_end():
    blocks = [BlockArrival(0, 0.0, (1.0,))]
    pipes = [
        Pipeline(0, 1.0, (0,), (0.9,)),
        Pipeline(1, 2.0, (0,), (0.5,), timeout=3.0),  # never fits: times out at 5
        Pipeline(2, 8.0, (0,), (0.5,)),  # never fits, no timeout: still pending at 10
        Pipeline(3, 11.0, (0,), (0.01,)),  # after the end: never in the system
    ]
    run = simulate_budget(GreedyFits(), blocks, pipes, until=10.0)
    assert [r.status for r in run.records] == [GRANTED, TIMED_OUT, PENDING]
    s = run.summary()
    assert (s["granted"], s["timed_out"], s["pending"]) == (1, 1, 1)
    assert s["budget_used"] == pytest.approx(0.9)


def test_pipeline_on_a_block_not_yet_arrived_is_an_error():
    blocks = [BlockArrival(0, 0.0, (1.0,)), BlockArrival(1, 10.0, (1.0,))]
    with pytest.raises(ValueError, match=r"pipeline 7 at t=5.0 asks for blocks \[1\]"):
        simulate_budget(GreedyFits(), blocks, [Pipeline(7, 5.0, (1,), (0.1,))], until=20.0)


def test_renyi_accounting_fits_at_some_order_and_spends_at_all():
    cap = rdp_capacity(1.0, 1e-6, RDP_ORDERS)
    # log(1e6)/(alpha-1) > 1 for alpha <= 14: only orders 16, 32, 64 have budget
    assert [c > 0 for c in cap] == [False] * 6 + [True] * 3
    assert cap[-1] == pytest.approx(1 - math.log(1e6) / 63)
    d = gaussian_rdp_demand(0.01, 1e-9, RDP_ORDERS)
    assert d[-1] / d[0] == pytest.approx(32.0)  # linear in alpha
    block = PrivacyBlock(0, 0.0, cap)
    n = 0
    while block.fits(d):
        block.spend(d)
        n += 1
    # far more pipelines than the 100 that basic composition allows at epsilon 0.01
    assert n > 1700
    # within budget at some order, and no order has room for one more
    assert any(s <= c + 1e-9 for s, c in zip(block.spent, cap, strict=True) if c > 0)
    assert not any(s + x <= c + 1e-9 for s, x, c in zip(block.spent, d, cap, strict=True) if c > 0)


def test_same_inputs_same_run():
    blocks, pipes = _workload([(t * 0.7, 1 + t % 3, 0.1, 5.0) for t in range(50)])
    a = simulate_budget(GreedyFits(), blocks, pipes, until=40.0)
    b = simulate_budget(GreedyFits(), blocks, pipes, until=40.0)
    assert a.grants == b.grants and a.summary() == b.summary()
