"""InferCept's own policy (artifacts/infercept/policy.py) without a model: its registration, the
waste formulas, the authors' iteration models and the swap budget, min-waste decisions on
hand-built scheduler states, its chunked recompute and pipelined swap, fast-forward equivalence
under it, and where vLLM's forward time goes that it saves. The core baselines and scheduler
hooks: tests/sched/test_intercept.py."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.infercept.policy import (
    GPTJ_6B_A100,
    LLAMA_13B_TP2_A100,
    LinearIterationCost,
    MinWastePolicy,
    chunked_discard_waste,
    discard_waste,
    mean_durations,
    preserve_waste,
    swap_budget_tokens,
    swap_waste,
)
from core.sched import (
    INTERCEPT_POLICIES,
    PauseMode,
    RequestStatus,
    SchedulerConfig,
    make_intercept_policy,
)
from core.sim import ReplicaConfig, Simulator
from core.workload import Interception, Request
from tests.sched.test_intercept import (
    BASELINES,
    add,
    call,
    check_chunked_run,
    check_fast_forward_changes_nothing,
    check_fast_forward_changes_nothing_randomly,
    make,
    paused_pair,
    run_all,
    step,
)

ROOT = Path(__file__).resolve().parents[3]

# 1 ms per token + 10 ms per iteration; 1 ms per token over the host link
COST = LinearIterationCost(a_s=0.001, c_s=0.010, kv_bytes_per_token=1000, host_bandwidth=1e6)
FREE_LINK = LinearIterationCost(a_s=0.001, c_s=0.010)  # no KV bytes: swaps are free, unlimited


# ---- the name ---------------------------------------------------------------------------------


def test_importing_the_artifact_registers_infercept():
    assert INTERCEPT_POLICIES["infercept"] is MinWastePolicy
    kinds = {n: type(make_intercept_policy(n)).__name__ for n in (*BASELINES, "infercept")}
    assert kinds["infercept"] == "MinWastePolicy"
    assert make_intercept_policy("InferCept", saturation=64).recompute_saturation == 64
    assert make_intercept_policy("infercept", chunked_recompute=False).recompute_saturation is None
    path = make_intercept_policy("artifacts.infercept.policy:MinWastePolicy", saturation=64)
    assert path == make_intercept_policy("infercept", saturation=64)
    with pytest.raises(ValueError, match="mean_duration_s"):
        make_intercept_policy("infercept", oracle=False)
    with pytest.raises(ValueError, match="swap_in_budget_tokens"):
        MinWastePolicy(swap_in_budget_tokens=0)


def test_without_the_import_the_name_fails_naming_the_import():
    """In a fresh interpreter that has not imported the artifact: one ValueError naming the
    import and the import path; the import path itself works there without the import."""
    code = """
from core.sched import make_intercept_policy
try:
    make_intercept_policy("infercept")
except ValueError as e:
    print(e)
print(type(make_intercept_policy("artifacts.infercept.policy:MinWastePolicy")).__name__)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", "PATH": ""},
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("unknown interception policy 'infercept' (known: preserve, vllm")
    assert "`import artifacts.infercept`" in out[0]
    assert "'artifacts.infercept.policy:MinWastePolicy'" in out[0]
    assert out[1] == "MinWastePolicy"


def test_llm_takes_the_name(llama_dir):
    from core.engine import LLM

    llm = LLM(llama_dir, block_size=4, num_kv_blocks=16, intercept="infercept")
    assert isinstance(llm.engine.scheduler.intercept, MinWastePolicy)


# ---- waste formulas ---------------------------------------------------------------------------


def test_waste_formulas_on_hand_computed_cases():
    assert preserve_waste(2.0, 100, 2.0) == pytest.approx(400.0)  # T * C * M
    # T_fwd(C) * C * M + T_fwd(C) * C_other * M = 0.05 * (100 + 300)
    assert discard_waste(0.05, 100, 300) == pytest.approx(20.0)
    assert discard_waste(0.05, 100, 300, 2.0) == pytest.approx(40.0)
    assert swap_waste(0.01, 500) == pytest.approx(10.0)  # 2 * T_swap * C_batch
    # chunk h = 184 - 84 = 100: two full chunks and a last one of 50 tokens
    #   T_fwd(184) * 100 * (2*3/2) = 0.194 * 300 = 58.2     (the request's growing KV)
    #   dT(100) * 2 * 1000 = 0.1 * 2000 = 200                (the batch waits, full chunks)
    #   dT(50) * (1000 + 50) = 0.05 * 1050 = 52.5            (and for the last chunk)
    assert chunked_discard_waste(250, 84, 1000, FREE_LINK, saturation=184) == pytest.approx(310.7)
    # h divides C: every token is charged, the last chunk is a full one
    assert chunked_discard_waste(200, 84, 1000, FREE_LINK, 184) == pytest.approx(58.2 + 200.0)
    # a saturated batch still recomputes one token per iteration
    w = chunked_discard_waste(3, 500, 10, FREE_LINK, 184)
    assert w == pytest.approx(0.194 * 1 * 6 + 0.001 * 3 * 10)
    assert chunked_discard_waste(0, 1, 10, FREE_LINK) == 0.0


def test_the_authors_iteration_models_and_the_derived_swap_budget():
    assert GPTJ_6B_A100.forward_s(384) == pytest.approx(0.0463e-3 * 384 + 0.010)
    assert LLAMA_13B_TP2_A100.forward_s(100) == pytest.approx(0.0279e-3 * 100 + 0.0154)
    assert GPTJ_6B_A100.kv_bytes_per_token == 2 * 28 * 4096 * 2  # fp16 K+V, 28 x 4096
    # the KV tokens the link moves while a saturated iteration runs
    per_token = GPTJ_6B_A100.kv_bytes_per_token / GPTJ_6B_A100.host_bandwidth
    assert swap_budget_tokens(GPTJ_6B_A100, 384) == int(GPTJ_6B_A100.forward_s(384) / per_token)
    assert swap_budget_tokens(COST, 30) == 40  # (10 + 30) ms / 1 ms
    assert swap_budget_tokens(FREE_LINK, 30) is None
    p = MinWastePolicy(cost=COST, saturation=30)
    assert (p.swap_out_budget_tokens, p.swap_in_budget_tokens) == (40, 40)
    assert MinWastePolicy(cost=COST, swap_in_budget_tokens=8).swap_in_budget_tokens == 8
    assert mean_durations(
        [call(duration=1.0), call(duration=3.0), call(kind="x", duration=5.0)]
    ) == {"tool": 2.0, "x": 5.0}


# ---- decisions --------------------------------------------------------------------------------


def test_min_waste_discards_short_contexts_on_long_calls_and_preserves_long_ones_on_short():
    pol = MinWastePolicy(cost=FREE_LINK, saturation=384)
    sched = make(pol, blocks=200)
    r = add(sched, "r", 8, 40)
    short = add(sched, "short", 6, 6, [call(duration=50.0)])
    long = add(sched, "long", 300, 6, [call(duration=0.01)])
    while not (short.status == long.status == RequestStatus.PAUSED):
        step(sched, 0.0)
    wastes = {req.request_id: (w_p, w_d) for req, w_p, w_d in pol.wastes(sched, 0.0)}
    decode, other = r.num_uncomputed_tokens, r.num_computed_tokens
    # short: 7 tokens of KV idle for 50 s vs recomputing them in one chunk
    assert wastes["short"] == pytest.approx(
        (50.0 * 7, chunked_discard_waste(7, decode, other, FREE_LINK, 384))
    )
    assert wastes["short"][1] < wastes["short"][0]
    # long: 301 tokens idle for 10 ms vs recomputing 301 tokens while r waits
    assert wastes["long"][1] > wastes["long"][0] == pytest.approx(0.01 * 301)
    plan = pol.plan(sched, 0.0)
    assert list(plan.swap_targets) == [short] and not plan.discard  # the only candidate
    # the one-shot (paper) formula decides the same here
    one_shot = MinWastePolicy(cost=FREE_LINK, chunked_recompute=False)
    assert [r.request_id for r in one_shot.plan(sched, 0.0).swap_targets] == ["short"]


def test_min_waste_discards_all_candidates_but_the_largest_at_once():
    sched, r, a, b = paused_pair(MinWastePolicy(cost=FREE_LINK))
    out = step(sched, 2.0)
    assert b.pause_mode == PauseMode.DISCARD and b.num_computed_tokens == 0  # less waste: gone
    assert a.pause_mode == PauseMode.PRESERVE  # the largest: kept until memory runs short
    assert out.swap_out_tokens == 0 and r in [c.request for c in out.chunks]


@pytest.mark.parametrize(
    "budget,host,mode",
    [
        (12, 16, PauseMode.SWAP),  # a's 3 blocks fit
        (11, 16, PauseMode.DISCARD),  # over the budget
        (64, 0, PauseMode.DISCARD),
    ],
)  # no host pool
def test_memory_pressure_swaps_the_largest_waste_within_the_swap_budget(budget, host, mode):
    pol = MinWastePolicy(cost=COST, swap_out_budget_tokens=budget)
    # 12 blocks: r grows into the room a and b hold; b is discarded at once (less waste),
    # then a goes when r needs its blocks
    sched, r, a, b = paused_pair(pol, blocks=12, host=host)
    outs, t = [], 2.0
    while a.pause_mode == PauseMode.PRESERVE:
        outs.append(step(sched, t))
        t += 1.0
        assert t < 60
    assert a.pause_mode == mode
    assert r.timeline.num_preemptions == 0  # the paused request went first
    moved = [o.swap_out_tokens for o in outs]
    assert all(m <= budget for m in moved)
    assert sum(moved) == (12 if mode == PauseMode.SWAP else 0)
    assert all(o.swap_overlaps_forward for o in outs)
    sched.kv.manager.check_integrity()


def test_oracle_or_mean_estimate_of_the_remaining_call():
    # the call is a "chat" turn that actually returns in 0.3 s; chats last 30 s on average
    est = MinWastePolicy(cost=FREE_LINK, oracle=False, mean_duration_s={"chat": 30.0, "calc": 0.1})
    oracle = MinWastePolicy(cost=FREE_LINK)
    sched = make(oracle, blocks=200, budget=512)
    add(sched, "r", 300, 40)  # recomputing a would stall r's 300 tokens
    a = add(sched, "a", 60, 6, [call(duration=0.3, kind="chat")])
    t = 0.0
    while a.status != RequestStatus.PAUSED:
        step(sched, t)
        t += 0.01
    now = a.pause_time + 0.1
    assert oracle.remaining_s(a, now) == pytest.approx(0.2)
    assert est.remaining_s(a, now) == pytest.approx(29.9)
    assert est.remaining_s(a, a.pause_time + 40) == 0.0  # overdue: never below 0
    a.paused_by = call(kind="unknown")
    assert est.remaining_s(a, now) == pytest.approx((30.0 + 0.1) / 2 - 0.1)  # the table's mean
    a.paused_by = call(duration=0.3, kind="chat")
    assert not oracle.plan(sched, now).swap_targets  # 0.2 s left: keep it
    assert est.plan(sched, now).swap_targets == [a]  # believed 29.9 s: a candidate


def test_quiet_while_decoding_when_nothing_would_be_discarded():
    sched, r, a, b = paused_pair(MinWastePolicy(cost=FREE_LINK))
    assert not sched.intercept.quiet(sched, 2.0)  # b would be discarded
    step(sched, 2.0)
    assert sched.intercept.quiet(sched, 3.0)  # only a, the largest, is left


# ---- chunked recompute and pipelined swap ------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000), saturation=st.integers(1, 48), blocks=st.sampled_from([40, 200])
)
def test_chunked_recompute_never_exceeds_its_budget(seed, saturation, blocks):
    rng = random.Random(seed)
    pol = MinWastePolicy(
        cost=COST, saturation=saturation, swap_out_budget_tokens=rng.choice([None, 4, 16])
    )
    check_chunked_run(pol, rng, saturation, blocks)


def test_a_swap_in_beyond_the_budget_continues_in_later_steps():
    pol = MinWastePolicy(cost=COST, swap_in_budget_tokens=4)  # one block per step
    sched = make(pol, host=16)
    r = add(sched, "r", 8, 30)
    a = add(sched, "a", 10, 10)
    step(sched, 0.0)
    step(sched, 1.0)
    sched.pause("a", 1.0, PauseMode.SWAP)  # 11 tokens of KV: 3 blocks go to the host
    sched.resume("a", [7, 8], 1.0)
    assert a.status == RequestStatus.SWAPPED
    outs = [step(sched, 2.0 + i) for i in range(3)]
    assert outs[0].swap_out_tokens == 12  # the pause's swap-out goes with the next step
    assert [o.swap_in_tokens for o in outs] == [4, 4, 4]
    assert [a in [c.request for c in o.chunks] for o in outs] == [False, False, True]
    assert all(r in [c.request for c in o.chunks] for o in outs)  # the batch never waits
    assert outs[2].copies.swap_in and not outs[1].copies.swap_in  # blocks move when all crossed
    run_all(sched)
    assert a.timeline.recomputed_tokens == 0


# ---- the simulator ----------------------------------------------------------------------------


POLICIES = {
    "infercept": lambda: make_intercept_policy("infercept"),
    "infercept-cost": lambda: MinWastePolicy(cost=COST, saturation=24),
    "infercept-estimate": lambda: MinWastePolicy(
        cost=COST, saturation=24, oracle=False, mean_duration_s={"calc": 0.1, "chat": 2.0}
    ),
    "infercept-tight": lambda: MinWastePolicy(
        cost=COST, saturation=8, swap_out_budget_tokens=8, swap_in_budget_tokens=4
    ),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("blocks,cache", [(30, "block"), (400, "none")])  # short of KV, or not
def test_fast_forward_changes_nothing_under_every_policy(name, blocks, cache):
    check_fast_forward_changes_nothing(POLICIES[name], blocks, cache)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    name=st.sampled_from(sorted(POLICIES)),
    blocks=st.sampled_from([24, 40, 400]),
    cache=st.sampled_from(["block", "none"]),
)
def test_fast_forward_changes_nothing_on_random_tool_workloads(seed, name, blocks, cache):
    check_fast_forward_changes_nothing_randomly(POLICIES[name], seed, blocks, cache)


class Split:
    """The policy's own linear model as the simulator's cost, adding up how much of the forward
    time recomputation took (its tokens' share of each step's per-token time)."""

    def __init__(self, cost):
        self.cost = cost
        self.forward = self.recompute = 0.0

    def swap_s(self, tokens):
        return self.cost.swap_s(tokens)

    def step_time_for(self, out):
        t = self.cost.step_time_for(out)
        self.forward += t
        self.recompute += self.cost.a_s * out.num_recompute_tokens
        return t


def agent_workload(n=120, rate=4.0, seed=0):
    """Long contexts (1-2k tokens) and short calls (50-500 ms), three per request: the
    augmented-LLM case where vLLM's discards make it recompute most of what it computes."""
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        icps = [Interception(a, rng.uniform(0.05, 0.5), rng.randint(5, 40)) for a in (30, 60, 90)]
        reqs.append(Request(f"r{i}", t, rng.randint(1000, 2000), 120, interceptions=icps))
    return reqs


def test_vllm_spends_its_forward_time_recomputing_and_infercept_does_not():
    shares = {}
    for name in ("vllm", "infercept"):
        cost = Split(GPTJ_6B_A100)
        # GPT-J-6B on a 40 GB A100: ~56k tokens of KV besides the 12 GB of weights
        cfg = ReplicaConfig(
            cost,
            num_kv_blocks=3500,
            block_size=16,
            prefix_cache="none",
            scheduler=SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=256),
            num_host_blocks=8000,
            intercept=make_intercept_policy(name),
        )
        res = Simulator([cfg], fast_forward=False).run(agent_workload())
        assert all(r.status == RequestStatus.FINISHED_LENGTH for r in res.requests)
        shares[name] = cost.recompute / cost.forward
    # the paper: recomputation is 37-40% of vLLM's forward time; InferCept removes most of it
    assert shares["vllm"] > 0.3
    assert shares["infercept"] < shares["vllm"] / 3
