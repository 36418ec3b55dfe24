"""Interception policies without a model: the core baselines and their names, the registry a
paper's own policy joins, the scheduler's hooks (a policy's plan: discards and swap targets;
chunked recompute; pipelined swap), the simulator's swap timing and fast-forward equivalence
under every baseline. InferCept's min-waste policy: tests/artifacts/infercept/test_policy.py."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.kv.backend import PagedKVBackend
from core.sched import (
    INTERCEPT_POLICIES,
    EngineRequest,
    IterationPlan,
    PauseMode,
    RequestStatus,
    ScheduledChunk,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    make_intercept_policy,
    register_intercept_policy,
)
from core.sched.intercept import DiscardPolicy, PreservePolicy, SwapPolicy
from core.sim import ReplicaConfig, SimulatedRunner, Simulator
from core.workload import Interception, Request
from tests.fakes import Params, fake_token
from tests.sim.test_fast_forward import LinearCost, explicit_tools, kv_state

BASELINES = ("preserve", "vllm", "improved-discard", "swap")


class LinkedCost:
    """1 ms per token + 10 ms per iteration (an empty step costs 0); 1 ms per token over the
    host link: a simulator cost model that is also its host link."""

    def step_time_for(self, out) -> float:
        return 0.001 * out.num_tokens + 0.010 if out.chunks else 0.0

    def swap_s(self, tokens: int) -> float:
        return 0.001 * tokens


COST = LinkedCost()


@dataclass(frozen=True, repr=False)
class FixedPlan(PreservePolicy):
    """Preserve every pause; each iteration discard the preserved requests named in ``discard``
    and offer those in ``targets`` as swap targets (a plan that names requests, not a rule)."""

    name: str = "fixed-plan"
    discard: frozenset[str] = frozenset()
    targets: tuple[str, ...] = ()
    recompute_saturation: int | None = None
    swap_out_budget_tokens: int | None = None
    swap_in_budget_tokens: int | None = None
    pipelined_swap: bool = True

    def plan(self, sched, now) -> IterationPlan:
        held = {r.request_id: r for r in sched.paused if r.pause_mode == PauseMode.PRESERVE}
        return IterationPlan(
            discard=[r for rid, r in held.items() if rid in self.discard],
            swap_targets=[held[rid] for rid in self.targets if rid in held],
        )

    def quiet(self, sched, now) -> bool:
        return not self.plan(sched, now).discard


def make(policy, blocks=64, bs=4, host=0, budget=256, seqs=16, prefix=False) -> Scheduler:
    """A scheduler on a paged backend; no prefix caching by default (InferCept's vLLM had
    none, and with it a discarded context's full blocks may be found again in the cache)."""
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=seqs, max_model_len=1024)
    kv = PagedKVBackend(blocks, bs, num_host_blocks=host, enable_prefix_caching=prefix)
    return Scheduler(cfg, kv, intercept=policy)


def add(sched, rid, n_prompt, n_out, icps=(), arrival=0.0) -> EngineRequest:
    seed = sum(map(ord, rid))  # distinct prompts: no prefix-cache sharing between requests
    req = EngineRequest(
        rid,
        [3 + (i * 13 + seed) % 40 + 40 * (seed % 7) for i in range(n_prompt)],
        Params(n_out),
        arrival_time=arrival,
        interceptions=list(icps),
    )
    sched.add_request(req)
    return req


def step(sched, now) -> SchedulerOutput:
    out = sched.schedule(now)
    sched.update(
        out, {c.request.request_id: fake_token(c.request) for c in out.chunks if c.sample}, now
    )
    return out


def call(after=2, duration=100.0, returned=3, kind="tool") -> Interception:
    return Interception(
        after_output_tokens=after, duration_s=duration, returned_tokens=returned, kind=kind
    )


# ---- names ------------------------------------------------------------------------------------


def test_factory_names_and_bad_options():
    kinds = {n: type(make_intercept_policy(n)).__name__ for n in BASELINES}
    assert kinds == {
        "preserve": "PreservePolicy",
        "vllm": "DiscardPolicy",
        "improved-discard": "DiscardPolicy",
        "swap": "SwapPolicy",
    }
    assert list(INTERCEPT_POLICIES)[:4] == list(BASELINES)
    assert make_intercept_policy("vllm").requeue == "tail"
    assert make_intercept_policy("VLLM").name == "vllm"
    assert make_intercept_policy("improved-discard").requeue == "head"
    assert make_intercept_policy(None).name == "preserve"
    pol = SwapPolicy()
    assert make_intercept_policy(pol) is pol
    with pytest.raises(ValueError, match="options"):
        make_intercept_policy(pol, saturation=3)
    with pytest.raises(ValueError, match="takes no options"):
        make_intercept_policy("swap", saturation=3)


def test_an_unknown_name_is_rejected_with_the_known_names():
    with pytest.raises(ValueError) as e:
        make_intercept_policy("lru")
    msg = str(e.value)
    assert msg.startswith(
        "unknown interception policy 'lru' (known: preserve, vllm, improved-discard, swap"
    )
    # how to get a paper's own policy: the artifact import, or an import path
    assert "import artifacts.infercept" in msg and "'module:Class'" in msg


def test_registered_names_and_import_paths():
    def make(**options):
        return FixedPlan(targets=tuple(options.get("targets", ())))

    register_intercept_policy("Fixed-Plan-Test", make)
    try:
        register_intercept_policy("fixed-plan-test", make)  # the same factory again: no-op
        with pytest.raises(ValueError, match="already registered"):
            register_intercept_policy("fixed-plan-test", FixedPlan)
        assert make_intercept_policy("fixed-plan-test", targets=["a"]).targets == ("a",)
        assert make_intercept_policy("fixed-plan-test") == FixedPlan()
    finally:
        del INTERCEPT_POLICIES["fixed-plan-test"]
    assert "fixed-plan-test" not in INTERCEPT_POLICIES
    # an import path needs no registration; options go to the class
    path = f"{__name__}:FixedPlan"
    assert make_intercept_policy(path, targets=("b",)) == FixedPlan(targets=("b",))
    assert make_intercept_policy("core.sched.intercept:DiscardPolicy", requeue="head").requeue == (
        "head"
    )
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        make_intercept_policy("no_such_module:Policy")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        make_intercept_policy("core.sched.intercept:Nope")
    with pytest.raises(ValueError, match="not an InterceptPolicy"):
        make_intercept_policy("core.sched.intercept:IterationPlan")
    with pytest.raises(ValueError, match="without ':'"):
        register_intercept_policy("a:b", make)


# ---- decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,mode",
    [
        ("preserve", PauseMode.PRESERVE),
        ("vllm", PauseMode.DISCARD),
        ("improved-discard", PauseMode.DISCARD),
        ("swap", PauseMode.SWAP),
        ("fixed-plan", PauseMode.PRESERVE),
    ],
)
def test_each_policy_pauses_in_its_mode(name, mode):
    policy = FixedPlan() if name == "fixed-plan" else make_intercept_policy(name)
    sched = make(policy, host=32)
    req = add(sched, "a", 10, 6, [call()])
    for t in range(2):
        step(sched, float(t))
    assert req.status == RequestStatus.PAUSED and req.pause_mode == mode
    assert req.paused_by == call() and req.pause_time == 1.0
    assert (req.num_computed_tokens == 0) == (mode == PauseMode.DISCARD)


@pytest.mark.parametrize("name,first", [("vllm", "b"), ("improved-discard", "a")])
def test_discarded_requests_requeue_at_the_tail_or_the_head(name, first):
    sched = make(make_intercept_policy(name), seqs=1)  # one at a time: b waits behind a
    a = add(sched, "a", 10, 6, [call(duration=0.5)])
    b = add(sched, "b", 10, 4, arrival=0.1)
    step(sched, 0.0)
    step(sched, 1.0)  # a pauses after two tokens; b is admitted on the next step
    assert a.status == RequestStatus.PAUSED and b.status == RequestStatus.WAITING
    out = sched.schedule(2.0)  # a's call returned at 1.5: it re-queues before b is admitted
    assert [c.request.request_id for c in out.chunks] == [first]
    assert (a.arrival_time == 2.0) == (name == "vllm")  # vLLM: as if it had just arrived


def paused_pair(policy, blocks=64, host=0, **kw):
    """A running request ``r`` and two requests paused for long calls after two tokens: ``a``
    (11 tokens of KV, 3 blocks) and ``b`` (7 tokens, 2 blocks)."""
    sched = make(policy, blocks=blocks, host=host, **kw)
    r = add(sched, "r", 8, 30)
    a = add(sched, "a", 10, 6, [call(duration=100.0)])
    b = add(sched, "b", 6, 6, [call(duration=100.0)])
    step(sched, 0.0)
    step(sched, 1.0)
    assert a.status == b.status == RequestStatus.PAUSED
    assert (a.num_computed_tokens, b.num_computed_tokens) == (11, 7)
    return sched, r, a, b


def test_a_plan_discards_at_once_and_keeps_swap_targets_preserved():
    sched, r, a, b = paused_pair(FixedPlan(discard=frozenset({"b"}), targets=("a",)))
    out = step(sched, 2.0)
    assert b.pause_mode == PauseMode.DISCARD and b.num_computed_tokens == 0
    assert a.pause_mode == PauseMode.PRESERVE  # a target: kept until memory runs short
    assert out.swap_out_tokens == 0 and r in [c.request for c in out.chunks]
    assert sched.intercept.quiet(sched, 3.0)  # nothing left to discard


@pytest.mark.parametrize(
    "budget,host,mode",
    [
        (12, 16, PauseMode.SWAP),  # a's 3 blocks fit
        (11, 16, PauseMode.DISCARD),  # over the budget
        (64, 0, PauseMode.DISCARD),  # no host pool
    ],
)
def test_memory_pressure_frees_the_swap_target_within_the_swap_budget(budget, host, mode):
    pol = FixedPlan(discard=frozenset({"b"}), targets=("a",), swap_out_budget_tokens=budget)
    # 12 blocks: r grows into the room a and b hold; b is discarded at once, then a goes
    # (swapped out if it fits the budget and the host pool) when r needs its blocks
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


# ---- chunked recompute ------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ChunkedDiscard(DiscardPolicy):
    """Discard every interception, recompute in chunks: the most recomputation to cap."""

    recompute_saturation: int | None = 16


def run_all(sched, max_steps=5000):
    """Step until done; ``(out, tokens of its recomputing requests' chunks)`` per step."""
    outs, now = [], 0.0
    while sched.has_unfinished():
        out = sched.schedule(now)
        outs.append((out, recompute_chunk_tokens(out)))
        sampled = {c.request.request_id: fake_token(c.request) for c in out.chunks if c.sample}
        sched.update(out, sampled, now)
        now += 0.25
        assert len(outs) < max_steps, "no progress"
    return outs


def recompute_chunk_tokens(out) -> int:
    """Tokens of the step's chunks that belong to recomputing requests (the whole chunk), read
    before the step's update."""
    return sum(c.num_tokens for c in out.chunks if c.start < c.request.max_computed_tokens)


def test_recompute_fills_only_the_unsaturated_budget():
    pol = ChunkedDiscard(name="vllm", requeue="head", recompute_saturation=16)
    sched = make(pol, blocks=200)
    runners = [add(sched, f"r{i}", 4, 40) for i in range(5)]
    a = add(sched, "a", 60, 6, [call(duration=1.0)])
    outs = run_all(sched)
    recomputing = [(o, n) for o, n in outs if o.num_recompute_tokens]
    assert recomputing, "a's context is recomputed"
    for out, n in recomputing:
        # five requests decode (one token each): 16 - 5 = 11 recompute tokens per step
        decode = sum(c.num_tokens for c in out.chunks if c.request in runners)
        assert out.recompute_budget == max(16 - decode, 1) == 11
        assert n <= 11
    assert a.timeline.recomputed_tokens == 61  # every token it had computed, once
    assert len(recomputing) >= 61 // 11


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    saturation=st.integers(1, 48),
    blocks=st.sampled_from([40, 200]),
    chunked=st.sampled_from(["discard", "plan"]),
)
def test_chunked_recompute_never_exceeds_its_budget(seed, saturation, blocks, chunked):
    rng = random.Random(seed)
    if chunked == "discard":
        pol = ChunkedDiscard(
            name="vllm", requeue=rng.choice(["head", "tail"]), recompute_saturation=saturation
        )
    else:  # a plan discarding some paused requests and offering others as swap targets
        pol = FixedPlan(
            discard=frozenset({"q1", "q4"}),
            targets=("q0", "q2", "q3"),
            recompute_saturation=saturation,
            swap_out_budget_tokens=rng.choice([None, 4, 16]),
        )
    check_chunked_run(pol, rng, saturation, blocks)


def check_chunked_run(pol, rng: random.Random, saturation: int, blocks: int) -> None:
    """A random tool workload under ``pol``: every step keeps recomputation within its budget,
    every request finishes with the tokens a run keeping every KV gives, no block leaks."""
    sched = make(
        pol,
        blocks=blocks,
        host=rng.choice([0, 30]),
        budget=rng.choice([8, 64, 256]),
        seqs=rng.choice([2, 8]),
        prefix=rng.random() < 0.5,
    )
    reqs = []
    for i in range(rng.randint(2, 7)):
        n_out = rng.randint(2, 25)
        icps = [
            call(after=a, duration=rng.choice([0.0, 0.5, 3.0, 50.0]), returned=rng.randint(0, 6))
            for a in sorted(rng.sample(range(1, n_out), 1))
        ]
        reqs.append(add(sched, f"q{i}", rng.randint(1, 60), n_out, icps, arrival=0.1 * i))
    for out, n in run_all(sched):
        if out.recompute_budget is not None:
            assert 1 <= out.recompute_budget <= saturation
            assert n <= out.recompute_budget
        assert out.num_recompute_tokens <= n
    assert all(r.status == RequestStatus.FINISHED_LENGTH for r in reqs)
    # policies change when tokens are computed, never which: the same run keeping every KV
    ref = make("preserve", blocks=400)
    ref_reqs = [
        add(
            ref,
            r.request_id,
            r.num_prompt_tokens,
            r.max_tokens,
            r.interceptions,
            arrival=r.arrival_time,
        )
        for r in reqs
    ]
    run_all(ref)
    assert [r.token_ids for r in reqs] == [r.token_ids for r in ref_reqs]
    sched.kv.manager.check_integrity()
    assert sched.kv.num_free_blocks == sched.kv.num_blocks


# ---- pipelined swap ---------------------------------------------------------------------------


def test_a_swap_in_beyond_the_budget_continues_in_later_steps():
    pol = FixedPlan(swap_in_budget_tokens=4)  # one block per step
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


def test_simulated_swap_time_adds_to_the_step_or_hides_behind_it():
    runner = SimulatedRunner(COST)  # COST is also the host link: 1 ms per token
    chunk = [ScheduledChunk(None, 5, 30, False)]  # 30 tokens: 40 ms forward
    serial = SchedulerOutput(chunks=chunk, swap_out_tokens=25, swap_in_tokens=10)
    assert runner.execute(serial).forward_s == pytest.approx(0.040 + 0.025)
    piped = SchedulerOutput(chunks=chunk, swap_out_tokens=25, swap_overlaps_forward=True)
    assert runner.execute(piped).forward_s == pytest.approx(0.040)
    piped.swap_in_tokens = 70
    assert runner.execute(piped).forward_s == pytest.approx(0.070)
    assert SimulatedRunner(LinearCost()).execute(serial).forward_s == pytest.approx(0.040)
    link_only = SchedulerOutput(swap_in_tokens=4)
    assert not link_only.is_empty and SchedulerOutput().is_empty


# ---- the simulator ----------------------------------------------------------------------------


def tool_workload(seed=0, n=8):
    """explicit_tools with longer calls: every policy has something to decide."""
    rng = random.Random(seed)
    reqs = []
    for r in explicit_tools(n, seed=seed):
        icps = [
            Interception(
                i.after_output_tokens,
                rng.choice([0.05, 0.4, 3.0]),
                i.returned_tokens,
                kind=rng.choice(["calc", "chat"]),
            )
            for i in r.interceptions
        ]
        reqs.append(
            Request(
                r.request_id,
                r.arrival_time,
                r.prompt_len,
                r.output_len,
                prompt_token_ids=r.prompt_token_ids,
                interceptions=icps,
            )
        )
    return reqs


POLICIES = {
    **{name: lambda name=name: make_intercept_policy(name) for name in BASELINES},
    "chunked-discard": lambda: ChunkedDiscard(name="vllm", requeue="head", recompute_saturation=8),
}


def sim_replicas(policy, n=2, blocks=60, cache="block"):
    sched = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=4096)
    return [
        ReplicaConfig(
            LinearCost(),
            num_kv_blocks=blocks,
            block_size=4,
            prefix_cache=cache,
            scheduler=sched,
            num_host_blocks=80,
            intercept=policy,
            host_link=COST,
        )
        for _ in range(n)
    ]


def run_with_and_without_fast_forward(make_policy, *, blocks, cache, seed, replicas=2, n=8):
    """The simulated run of a tool workload under ``make_policy()`` without and with the decode
    fast-forward: per run its fingerprint, the KV state left behind, the fast-forwarded steps
    and whether every request finished. Shared by the tests of every interception policy."""
    runs = []
    for ff in (False, True):
        sim = Simulator(
            sim_replicas(make_policy(), n=replicas, blocks=blocks, cache=cache),
            "least-work",
            fast_forward=ff,
        )
        res = sim.run(tool_workload(seed=seed, n=n))
        finished = all(r.is_finished for r in res.requests)
        runs.append((res.fingerprint(), kv_state(sim), res.fast_forwarded_steps, finished))
    return runs


def check_fast_forward_changes_nothing(make_policy, blocks, cache):
    plain, fast = run_with_and_without_fast_forward(
        make_policy, blocks=blocks, cache=cache, seed=blocks
    )
    assert plain[3] and fast[3]
    assert plain[:2] == fast[:2]
    assert fast[2] > 0


def check_fast_forward_changes_nothing_randomly(make_policy, seed, blocks, cache):
    plain, fast = run_with_and_without_fast_forward(
        make_policy, blocks=blocks, cache=cache, seed=seed, replicas=1, n=6
    )
    assert plain[:2] == fast[:2]


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
