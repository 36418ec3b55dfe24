"""The simulator: same decisions as the real engine, determinism, conservation, routing."""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cluster import LeastOutstandingWork, PrefixAffinity, RoundRobin
from core.engine import LLM, replay
from core.sched import SchedulerConfig
from core.sim import ReplicaConfig, Simulator
from core.sim.simulator import ARRIVAL, STEP_DONE, WAKE, Arrival, StepDone, Wake
from core.workload import (
    ChatSessionParams,
    Interception,
    Request,
    generate_chat_sessions,
    poisson_arrivals,
)


class LinearCost:
    """10 ms per step plus 1 ms per token: simple, and different for every batch."""

    def step_time_for(self, out) -> float:
        return 0.010 + 0.001 * out.num_tokens


class Recorder:
    """Wraps a runner: records each step's decisions and advances a fake clock by the cost."""

    def __init__(self, runner, clock, cost):
        self.runner, self.clock, self.cost = runner, clock, cost
        self.steps = []

    def execute(self, out):
        self.steps.append(decisions(out))
        result = self.runner.execute(out)
        self.clock[0] += self.cost.step_time_for(out)
        return result


def decisions(out):
    return (
        round(out.now, 9),
        tuple((c.request.request_id, c.start, c.num_tokens, c.sample) for c in out.chunks),
        tuple(out.preempted),
    )


def workload(n=12, seed=0, vocab=512):
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(20)]
    times = poisson_arrivals(n, rate=40.0, seed=seed)
    reqs = []
    for i in range(n):
        own = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))]
        prompt = (shared if i % 2 else []) + own
        reqs.append(
            Request(
                f"r{i}", float(times[i]), len(prompt), rng.randint(2, 9), prompt_token_ids=prompt
            )
        )
    return reqs


SCHED = dict(max_num_batched_tokens=24, max_num_seqs=4, max_model_len=256)


def test_simulated_replica_makes_the_engines_decisions(tmp_path):
    """The real engine (real forward, clock advanced by the cost model) and the simulator
    (cost model only) schedule the same chunks at the same times, preemptions included."""
    from tests.model.conftest import build_hf

    path = tmp_path / "llama"
    build_hf("llama").save_pretrained(path)
    reqs = workload()
    cost = LinearCost()

    llm = LLM(path, block_size=4, num_kv_blocks=24, **SCHED)
    clock = [0.0]
    eng = llm.engine
    eng.clock = lambda: clock[0]
    eng.runner = rec = Recorder(eng.runner, clock, cost)

    def sleep(dt):
        clock[0] += dt

    real = replay(eng, reqs, sleep=sleep)

    sim_sched = SchedulerConfig(**SCHED, vocab_size=512)
    # step by step: the recorder sees every step (fast-forward gives the same results, see
    # test_fast_forward.py, but skips the runner for the decode steps it fast-forwards)
    sim = Simulator(
        [ReplicaConfig(cost, num_kv_blocks=24, block_size=4, scheduler=sim_sched)],
        fast_forward=False,
    )
    srec = []
    rep = sim.replicas[0]
    orig = rep.runner.execute
    rep.runner.execute = lambda out: (srec.append(decisions(out)), orig(out))[1]
    result = sim.run(reqs)

    assert rec.steps == srec
    assert any(s[2] for s in srec), "the KV budget should force preemptions"
    by_id = {r.request_id: r for r in result.requests}
    for r in real:
        s = by_id[r.request_id]
        assert r.timeline.first_token_time == pytest.approx(s.timeline.first_token_time)
        assert r.timeline.finish_time == pytest.approx(s.timeline.finish_time)
        assert r.num_output_tokens == s.num_output_tokens


def chat(n_sessions=6, seed=1):
    w = generate_chat_sessions(
        ChatSessionParams(
            num_sessions=n_sessions,
            turns_mean=3,
            max_turns=4,
            input_len_mean=40,
            output_len_mean=20,
            think_time_mean_s=2.0,
            session_rate=1.0,
        ),
        seed,
    )
    return w


def replicas(n, **kw):
    cfg = dict(
        num_kv_blocks=400,
        block_size=4,
        prefix_cache="radix",
        scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16),
    )
    cfg.update(kw)
    return [ReplicaConfig(LinearCost(), **cfg) for _ in range(n)]


def test_same_input_same_result_and_every_request_finishes_once():
    w = chat()
    a = Simulator(replicas(2), LeastOutstandingWork()).run(w, sessions="closed")
    b = Simulator(replicas(2), LeastOutstandingWork()).run(w, sessions="closed")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.requests) == len(w)
    for r in a.requests:
        assert r.is_finished and r.status.finish_reason == "length"
        assert r.num_output_tokens == r.max_tokens == len(r.timeline.token_times)
    assert a.total_steps == sum(a.steps) > 0 and a.makespan > 0


def test_closed_loop_turns_wait_for_the_previous_answer():
    w = chat()
    res = Simulator(replicas(1), RoundRobin()).run(w, sessions="closed")
    by_id = {r.request_id: r for r in res.requests}
    for turns in w.sessions().values():
        for prev, nxt in zip(turns, turns[1:], strict=False):
            assert by_id[nxt.request_id].timeline.arrival_time == pytest.approx(
                by_id[prev.request_id].timeline.finish_time + nxt.think_time_s
            )
    # later turns reuse the previous turn's prompt and answer from the cache
    later = [by_id[t.request_id] for turns in w.sessions().values() for t in turns[1:]]
    assert later and all(r.num_cached_tokens > 0 for r in later)


def test_routers_distribute_as_designed():
    w = chat(n_sessions=8)
    rr = Simulator(replicas(4), RoundRobin()).run(w, sessions="closed")
    counts = [list(rr.replica_of.values()).count(i) for i in range(4)]
    assert max(counts) - min(counts) <= 1
    pa = Simulator(replicas(4), PrefixAffinity()).run(w, sessions="closed")
    for turns in w.sessions().values():  # a session's turns follow their cached history
        assert len({pa.replica_of[t.request_id] for t in turns}) == 1
    hits = lambda res: sum(r.num_cached_tokens for r in res.requests)  # noqa: E731
    assert hits(pa) > hits(rr)


def test_tool_calls_pause_in_virtual_time():
    prompt = list(range(3, 40))
    icp = Interception(after_output_tokens=2, duration_s=5.0, returned_tokens=6)
    reqs = [Request("a", 0.0, len(prompt), 6, prompt_token_ids=prompt, interceptions=[icp])]
    res = Simulator(replicas(1)).run(reqs)
    r = res.requests[0]
    assert r.timeline.num_pauses == 1 and r.num_output_tokens == 6
    gap = r.timeline.token_times[2] - r.timeline.token_times[1]
    assert gap >= 5.0
    assert r.num_tokens == len(prompt) + 6 + 6


def test_unknown_router_and_empty_cluster():
    with pytest.raises(ValueError, match="unknown router"):
        Simulator(replicas(1), "nope")
    with pytest.raises(ValueError, match="at least one replica"):
        Simulator([])


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.5, 1.0]),
            st.sampled_from([ARRIVAL, STEP_DONE, WAKE]),
            st.integers(0, 3),
            st.integers(0, 3),
        ),
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_events_pop_in_the_order_of_their_tuples(specs, rng):
    """Typed events order exactly as ``(time, kind, key, tag)`` tuples, ties and all."""
    seq = iter(range(10**6))
    events = []
    for t, kind, key, tag in specs:
        if kind == ARRIVAL:  # arrivals: unique creation order, a request that never compares
            events.append(Arrival(t, next(seq), Request(f"r{key}", t, 1, 1)))
        else:
            events.append((StepDone if kind == STEP_DONE else Wake)(t, key, tag))
    rng.shuffle(events)
    heap, ref = [], []
    for ev in events:
        heapq.heappush(heap, ev)
        heapq.heappush(ref, (ev.time, ev.kind, ev.key, ev.tag))
    popped = [heapq.heappop(heap) for _ in events]
    assert [(e.time, e.kind, e.key, e.tag) for e in popped] == [heapq.heappop(ref) for _ in events]
    assert [type(e) for e in popped] == [
        {ARRIVAL: Arrival, STEP_DONE: StepDone, WAKE: Wake}[e.kind] for e in popped
    ]
    for e in popped:
        if isinstance(e, StepDone):
            assert (e.replica, e.version) == (e.key, e.tag)
        elif isinstance(e, Wake):
            assert (e.replica, e.seq) == (e.key, e.tag)
        else:
            assert (e.seq, e.request) == (e.key, e.tag)
