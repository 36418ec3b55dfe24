"""Decode fast-forward is exact: the same simulation with ``fast_forward`` on and off gives the
same request timelines (arrival, first token, every token time, finish), replicas, cache hits,
step counts, busy times, makespan and final KV-cache state, on workloads that exercise every
reason a run must stop or be cut short (arrivals, routers reading replica state, sessions,
tool calls, preemption, swapping, admission limits, lockstep replicas)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.cluster import LeastOutstandingWork, PrefixAffinity, RoundRobin
from core.cluster.router import Router
from core.kv.backend import PagedKVBackend, RadixKVBackend
from core.sched import SchedulerConfig
from core.sim import ReplicaConfig, Simulator
from core.sim.cost import Efficiency, RooflineCostModel
from core.workload import (
    AgenticParams,
    ChatSessionParams,
    Interception,
    Request,
    generate_agentic_sessions,
    generate_chat_sessions,
    poisson_arrivals,
)


class LinearCost:
    """10 ms per step plus 1 ms per token (no ``decode_run_times``: the simulator asks
    ``step_time_for`` for every step of a run)."""

    def step_time_for(self, out) -> float:
        return 0.010 + 0.001 * out.num_tokens


class TickCost:
    """Every step takes exactly 1/64 s: float-exact times, so replicas in lockstep tie exactly."""

    def step_time_for(self, out) -> float:
        return 1 / 64


ROOFLINE = RooflineCostModel("llama-3-8b", "h100-sxm")  # fitted ridge_blend 0.7: powers
WINDOWED = RooflineCostModel("mistral-7b", "a100-80g", efficiency=Efficiency())  # window 4096


class LoadAndCache(Router):
    """A router outside the built-in ones (reads replicas however it likes): the simulator
    materializes every replica before asking it."""

    def route(self, req, replicas, now):
        return min(
            range(len(replicas)),
            key=lambda i: (
                -replicas[i].scheduler.kv.peek_prefix(req.token_ids),
                len(replicas[i].scheduler.running),
                i,
            ),
        )


# ---- workloads --------------------------------------------------------------------------------


def chat(n=10, seed=0, out=40, think=1.0, rate=2.0, prompt=48):
    return generate_chat_sessions(
        ChatSessionParams(
            num_sessions=n,
            turns_mean=3,
            max_turns=4,
            system_prompt_len=16,
            input_len_mean=prompt,
            output_len_mean=out,
            think_time_mean_s=think,
            session_rate=rate,
            vocab_size=500,
        ),
        seed,
    )


def lengths_only(n=40, seed=0, rate=8.0):
    rng = random.Random(seed)
    times = poisson_arrivals(n, rate=rate, seed=seed)
    return [
        Request(f"r{i}", float(times[i]), rng.randint(5, 300), rng.randint(1, 120))
        for i in range(n)
    ]


def tools(n=6, seed=0):
    return generate_agentic_sessions(
        AgenticParams(
            num_sessions=n,
            steps_mean=3,
            max_steps=4,
            tool_prompt_len=64,
            task_len_mean=20,
            action_len_mean=12,
            observation_len_mean=30,
            tool_duration_mean_s=0.3,
            session_rate=4.0,
            interceptions=True,
        ),
        seed,
    )


def explicit_tools(n=8, seed=0):
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randint(10, 60))]
        icps = [
            Interception(
                after_output_tokens=a,
                duration_s=rng.choice([0.0, 0.05, 0.4]),
                returned_tokens=rng.randint(0, 9),
            )
            for a in sorted(rng.sample(range(1, 30), 2))
        ]
        reqs.append(
            Request(f"t{i}", 0.07 * i, len(prompt), 40, prompt_token_ids=prompt, interceptions=icps)
        )
    return reqs


def lockstep(n_sessions=8, turns=3):
    """Identical sessions, all at t=0, think time 0: replicas run in exact lockstep."""
    reqs = []
    for s in range(n_sessions):
        prompt = [7] * 20
        for t in range(turns):
            reqs.append(
                Request(
                    f"s{s}t{t}",
                    0.0,
                    len(prompt),
                    25,
                    prompt_token_ids=list(prompt),
                    session_id=f"s{s}",
                    turn=t,
                    think_time_s=0.0,
                )
            )
            prompt = prompt + [9] * 25 + [11] * 5
    return reqs


def tie_breaker():
    """Two sessions decode in lockstep on two replicas; a third request joins replica 0 mid-way
    (cutting its run), so the two replicas' last steps tie although their runs started at
    different times. Which one is handled first decides where the next turns go."""
    reqs = []
    for s in ("a", "b"):
        reqs += [
            Request(
                f"{s}{t}",
                0.0,
                10 + 20 * t,
                20,
                prompt_token_ids=[3] * (10 + 20 * t),
                session_id=s,
                turn=t,
                think_time_s=0.0,
            )
            for t in range(3)
        ]
    reqs.append(Request("c", 0.1, 6, 2, prompt_token_ids=[4] * 6))
    return reqs


def router_sees_progress():
    """Least-work must compare the replicas' progress at the arrival: replica 0's long request
    started first and is further along than it was when its run started."""
    return [
        Request("r0", 0.0, 10, 300, prompt_token_ids=[5] * 10),
        Request("r1", 1.0, 10, 250, prompt_token_ids=[6] * 10),
        Request("r2", 2.5, 10, 5, prompt_token_ids=[7] * 10),
    ]


def prefix_in_flight():
    """A request arrives while the step that fills (and hashes) a block of a decoding request
    is in flight: step by step, that block is already in the cache (vLLM registers a block when
    it is allocated), so prefix affinity sees 12 cached tokens of 13, not 8 of 13 (below its
    0.9 threshold, which would send the request to the idle replica instead)."""
    prompt, out = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], list(range(100, 200))
    # 10 ms + 1 ms/token: prefill ends at 0.020, decode steps at 0.031, 0.042, ...
    return [
        Request("a", 0.0, 10, 100, prompt_token_ids=prompt, output_token_ids=out),
        Request("b", 0.035, 13, 5, prompt_token_ids=prompt + out[:2] + [99]),
    ]


# ---- configurations ---------------------------------------------------------------------------


def replicas(
    n, cost=None, blocks=400, bs=4, cache="radix", seqs=16, budget=256, model_len=4096, **kw
):
    sched = SchedulerConfig(
        max_num_batched_tokens=budget, max_num_seqs=seqs, max_model_len=model_len, **kw
    )
    return [
        ReplicaConfig(
            cost or LinearCost(),
            num_kv_blocks=blocks,
            block_size=bs,
            prefix_cache=cache,
            scheduler=sched,
        )
        for _ in range(n)
    ]


def swap_replicas(n, blocks, host):
    sched = SchedulerConfig(
        max_num_batched_tokens=64, max_num_seqs=8, max_model_len=4096, preemption_mode="swap"
    )
    return [
        ReplicaConfig(
            LinearCost(),
            num_kv_blocks=blocks,
            block_size=4,
            prefix_cache="block",
            scheduler=sched,
            num_host_blocks=host,
        )
        for _ in range(n)
    ]


SCENARIOS = {
    # name: (workload factory, sessions, router factory, replica factory)
    "chat-open-rr-radix-1": (chat, "open", RoundRobin, lambda: replicas(1)),
    "chat-closed-least-work-block-4": (
        chat,
        "closed",
        LeastOutstandingWork,
        lambda: replicas(4, cache="block"),
    ),
    "chat-closed-prefix-affinity-radix-4": (
        lambda: chat(12, seed=3),
        "closed",
        PrefixAffinity,
        lambda: replicas(4),
    ),
    "chat-open-prefix-affinity-block-roofline-4": (
        lambda: chat(12, seed=4, out=80),
        "open",
        PrefixAffinity,
        lambda: replicas(4, ROOFLINE, cache="block"),
    ),
    "chat-closed-custom-router-4": (
        lambda: chat(10, seed=5),
        "closed",
        LoadAndCache,
        lambda: replicas(4, cache="block"),
    ),
    "lengths-rr-none-roofline-4": (
        lambda: lengths_only(60),
        "open",
        RoundRobin,
        lambda: replicas(4, ROOFLINE, cache="none", bs=16),
    ),
    "lengths-least-work-windowed-1": (
        lambda: lengths_only(30, seed=2, rate=3.0),
        "open",
        LeastOutstandingWork,
        lambda: replicas(1, WINDOWED, bs=16, cache="none"),
    ),
    "tools-agentic-radix-1": (tools, "open", RoundRobin, lambda: replicas(1)),
    "tools-explicit-block-4": (
        explicit_tools,
        "open",
        LeastOutstandingWork,
        lambda: replicas(4, cache="block"),
    ),
    "small-kv-preemption-block-1": (
        lambda: chat(8, seed=6, out=60, rate=20.0),
        "open",
        RoundRobin,
        lambda: replicas(1, blocks=40, cache="block"),
    ),
    "small-kv-preemption-radix-4": (
        lambda: chat(16, seed=7, out=60, rate=40.0),
        "closed",
        LeastOutstandingWork,
        lambda: replicas(4, blocks=40),
    ),
    "small-kv-swap-4": (
        lambda: chat(16, seed=8, out=60, rate=40.0),
        "open",
        RoundRobin,
        lambda: swap_replicas(4, blocks=40, host=200),
    ),
    "seq-limit-waiting-1": (
        lambda: lengths_only(30, seed=9, rate=50.0),
        "open",
        RoundRobin,
        lambda: replicas(1, seqs=3, cache="none"),
    ),
    "model-len-limit-1": (
        lambda: chat(6, seed=10, out=200),
        "closed",
        RoundRobin,
        lambda: replicas(1, model_len=150),
    ),
    "lockstep-ties-rr-4": (lockstep, "closed", RoundRobin, lambda: replicas(4, TickCost())),
    "lockstep-ties-least-work-4": (
        lockstep,
        "closed",
        LeastOutstandingWork,
        lambda: replicas(4, TickCost(), cache="block"),
    ),
    "tie-order-rr-2": (tie_breaker, "closed", RoundRobin, lambda: replicas(2, TickCost())),
    "router-sees-progress-2": (
        router_sees_progress,
        "open",
        LeastOutstandingWork,
        lambda: replicas(2),
    ),
    "prefix-sees-in-flight-block-2": (
        prefix_in_flight,
        "open",
        lambda: PrefixAffinity(min_fraction=0.9),
        lambda: replicas(2, cache="block"),
    ),
    "block-size-1-1": (
        lambda: chat(5, seed=11),
        "open",
        RoundRobin,
        lambda: replicas(1, bs=1, blocks=1600, cache="block"),
    ),
}


def kv_state(sim):
    """Everything a replica's KV backend holds, block ids included."""
    out = []
    for rep in sim.replicas:
        kv = rep.scheduler.kv
        if isinstance(kv, PagedKVBackend):
            pool = kv.manager.pool
            out.append(
                (
                    [(b.block_id, b.block_hash, b.ref_cnt) for b in pool.free_queue],
                    sorted((h, b.block_id) for h, b in pool.cached.items()),
                    (pool.stats.allocated, pool.stats.evicted, pool.stats.revived),
                )
            )
        else:
            assert isinstance(kv, RadixKVBackend)
            cache = kv.cache
            out.append(
                (
                    sorted(kv.blocks._free),
                    [
                        (cache.node_tokens(n), cache.node_values(n), n.last_access, n.hit_count)
                        for n in cache.iter_nodes()
                    ],
                    kv.hit_rate,
                )
            )
    return out


def simulate(name, fast_forward):
    make_workload, sessions, make_router, make_replicas = SCENARIOS[name]
    sim = Simulator(make_replicas(), make_router(), fast_forward=fast_forward)
    res = sim.run(make_workload(), sessions=sessions)
    return sim, res


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_forward_changes_nothing(name):
    slow_sim, slow = simulate(name, False)
    fast_sim, fast = simulate(name, True)
    assert slow.fast_forwarded_steps == 0
    assert fast.fast_forwarded_steps > 0, "the scenario should fast-forward some steps"
    assert all(r.is_finished for r in slow.requests)
    assert fast.fingerprint() == slow.fingerprint()
    assert fast.replica_of == slow.replica_of
    assert kv_state(fast_sim) == kv_state(slow_sim)


def test_scenarios_exercise_what_they_claim():
    _, res = simulate("small-kv-preemption-block-1", True)
    assert sum(r.timeline.num_preemptions for r in res.requests) > 0
    _, res = simulate("small-kv-swap-4", True)
    assert sum(r.timeline.num_preemptions for r in res.requests) > 0
    _, res = simulate("tools-explicit-block-4", True)
    assert sum(r.timeline.num_pauses for r in res.requests) > 0
    _, res = simulate("model-len-limit-1", True)
    assert any(r.num_output_tokens < r.max_tokens for r in res.requests)
    _, res = simulate("chat-closed-prefix-affinity-radix-4", True)
    assert sum(r.num_cached_tokens for r in res.requests) > 0
    _, res = simulate("prefix-sees-in-flight-block-2", True)
    assert res.replica_of["b"] == res.replica_of["a"]
    # lockstep: several replicas finish steps at exactly the same times
    _, res = simulate("lockstep-ties-rr-4", True)
    ends = [r.timeline.finish_time for r in res.requests]
    assert len(set(ends)) < len(ends)


def test_runs_are_cut_by_arrivals_and_resume_after():
    """A long decode is cut by every arrival on its replica, and still ends where it should."""
    long = Request("long", 0.0, 10, 400, prompt_token_ids=list(range(3, 13)))
    short = [Request(f"s{i}", 0.5 + 0.37 * i, 8, 3, prompt_token_ids=[5] * 8) for i in range(8)]
    slow = Simulator(replicas(1), fast_forward=False).run([long, *short])
    fast_sim = Simulator(replicas(1))
    fast = fast_sim.run([long, *short])
    assert fast.fingerprint() == slow.fingerprint()
    assert fast_sim.replicas[0].version > 0  # runs were cut short


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_rep=st.integers(1, 4),
    router=st.sampled_from([RoundRobin, LeastOutstandingWork, PrefixAffinity, LoadAndCache]),
    cache=st.sampled_from(["radix", "block", "none"]),
    blocks=st.sampled_from([40, 60, 400]),
    seqs=st.sampled_from([2, 16]),
    sessions=st.sampled_from(["open", "closed"]),
    kind=st.sampled_from(["chat", "tools", "lengths"]),
    cost=st.sampled_from(["linear", "tick", "roofline"]),
)
def test_fast_forward_changes_nothing_on_random_setups(
    seed, n_rep, router, cache, blocks, seqs, sessions, kind, cost
):
    def make():
        c = {"linear": LinearCost(), "tick": TickCost(), "roofline": ROOFLINE}[cost]
        return replicas(n_rep, c, blocks=blocks, cache=cache, seqs=seqs)

    def workload():
        if kind == "chat":
            return chat(8, seed=seed, out=30, rate=10.0)
        if kind == "tools":
            return explicit_tools(6, seed=seed)
        return lengths_only(20, seed=seed, rate=20.0)

    results = []
    for ff in (False, True):
        sim = Simulator(make(), router(), fast_forward=ff)
        results.append((sim.run(workload(), sessions=sessions).fingerprint(), kv_state(sim)))
    assert results[0] == results[1]
