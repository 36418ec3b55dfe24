"""Preble's priority-group local scheduler (artifacts/preble/priority.py): its registration, the
groups, the rotation and the quotas exactly as the rule says, through the scheduler, the
simulator's decode fast-forward still exact, engine outputs unchanged. The scheduler's hook
itself: tests/sched/test_priority_groups.py."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from artifacts.preble.priority import PrebleGroupPolicy
from core.cluster import RoundRobin
from core.kv.backend import PagedKVBackend, RadixKVBackend
from core.sched import POLICIES, EngineRequest, Scheduler, SchedulerConfig, make_policy
from core.sim import ReplicaConfig, Simulator
from core.workload import Request
from tests.fakes import Params


def req(rid: str, n: int = 100, arrival: float = 0.0, seq: int = 0, prompt=None) -> EngineRequest:
    r = EngineRequest(
        rid, list(prompt) if prompt is not None else [5] * n, Params(4), arrival_time=arrival
    )
    r.seq_no = seq
    return r


def admit_all(policy: PrebleGroupPolicy, waiting: list, cached: dict) -> list[str]:
    """One step of a scheduler that admits everything the policy offers."""
    got = policy.admission_order(waiting, lambda r: cached[r.request_id])
    for r in got:
        waiting.remove(r)
    return [r.request_id for r in got]


# ---- the rule on hand-built queues ------------------------------------------------------------


def test_registered_with_the_paper_defaults():
    p = make_policy("preble-priority")
    assert isinstance(p, PrebleGroupPolicy) and POLICIES["preble-priority"] is PrebleGroupPolicy
    assert PrebleGroupPolicy.custom_admission_order
    assert isinstance(make_policy("artifacts.preble.priority:PrebleGroupPolicy"), PrebleGroupPolicy)
    assert (p.num_groups, p.base) == (10, 10)
    assert [p.quota(g) for g in (0, 4, 9)] == [10, 50, 100]
    with pytest.raises(ValueError, match="num_groups"):
        PrebleGroupPolicy(num_groups=0)


def test_without_the_import_the_name_fails_naming_the_import():
    """In a fresh interpreter that has not imported the artifact: one ValueError naming the
    import; the import path works there without it."""
    code = """
from core.sched import make_policy
try:
    make_policy("preble-priority")
except ValueError as e:
    print(e)
print(type(make_policy("artifacts.preble.priority:PrebleGroupPolicy")).__name__)
"""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PYTHONHASHSEED": "0", "PATH": ""},
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("unknown queue policy 'preble-priority' (known: fcfs, priority")
    assert "`import artifacts.preble`" in out[0]
    assert out[1] == "PrebleGroupPolicy"


@pytest.mark.parametrize(
    "cached, group",
    [
        (0, 0),
        (1, 0),
        (10, 0),
        (11, 1),
        (20, 1),
        (21, 2),
        (50, 4),
        (51, 5),
        (90, 8),
        (91, 9),
        (95, 9),
        (99, 9),
        (100, 9),
    ],
)
def test_group_is_ceil_of_ten_times_the_cached_fraction_minus_one(cached, group):
    assert PrebleGroupPolicy().group_of(cached, 100) == group


def test_rotation_and_quotas_follow_the_rule():
    """Groups 0 (15 requests), 1 (25) and 9 (3), arrivals interleaved across groups. Each step
    serves one group: the first non-empty one from the pointer downwards, oldest first, up to
    (g + 1) * 10 requests; the pointer then moves to the group below (0 wraps to 9)."""
    kinds = [0] * 15 + [1] * 25 + [9] * 3
    random.Random(0).shuffle(kinds)
    waiting, cached = [], {}
    for i, g in enumerate(kinds):
        rid = f"g{g}-{i:02d}"
        waiting.append(req(rid, arrival=float(i), seq=i + 1))
        cached[rid] = {0: 0, 1: 15, 9: 95}[g]
    group = {
        g: [r.request_id for r in waiting if r.request_id.startswith(f"g{g}-")] for g in (0, 1, 9)
    }
    assert [len(group[g]) for g in (0, 1, 9)] == [15, 25, 3]
    p = PrebleGroupPolicy()
    assert admit_all(p, waiting, cached) == group[9]  # all 3 (quota 100)
    assert admit_all(p, waiting, cached) == group[1][:20]  # 8..2 are empty; quota 20
    assert admit_all(p, waiting, cached) == group[0][:10]  # quota 10
    assert admit_all(p, waiting, cached) == group[1][20:]  # wrapped to 9, down to 1
    assert admit_all(p, waiting, cached) == group[0][10:]
    assert waiting == [] and admit_all(p, waiting, cached) == []


def test_one_group_per_step_even_when_more_would_fit():
    p = PrebleGroupPolicy()
    waiting = [req("cold", seq=1), req("hot", seq=2, arrival=1.0)]
    cached = {"cold": 0, "hot": 95}
    assert admit_all(p, waiting, cached) == ["hot"]
    assert admit_all(p, waiting, cached) == ["cold"]


def test_a_group_is_kept_while_waiting_and_recomputed_on_reentry():
    """The authors group a request when it enters the queue; a later change of its cache hit
    does not move it, but a preempted request is grouped again."""
    p = PrebleGroupPolicy(num_groups=10, base=1)
    a, b, c = req("a", seq=1), req("b", seq=2), req("c", seq=3)
    waiting, cached = [a, b, c], {"a": 0, "b": 0, "c": 55}
    assert admit_all(p, waiting, cached) == ["c"]  # group 5; pointer -> 4
    cached["b"] = 95  # b's prefix got cached meanwhile: b stays in group 0
    assert admit_all(p, waiting, cached) == ["a"]  # group 0 (quota 1), oldest first
    b.timeline.num_preemptions += 1  # as if b had run and been preempted: a new wait
    waiting.append(req("d", seq=4))
    cached["d"] = 0
    assert admit_all(p, waiting, cached) == ["b"]  # pointer 9: b is in group 9 now
    assert admit_all(p, waiting, cached) == ["d"]


def test_the_cached_fraction_is_asked_once_per_wait():
    p = PrebleGroupPolicy()
    waiting = [req(f"r{i}", seq=i + 1) for i in range(30)]
    asked: list[str] = []

    def cached(r):
        asked.append(r.request_id)
        return 0

    for _ in range(3):
        got = p.admission_order(waiting, cached)
        for r in got:
            waiting.remove(r)
    assert sorted(asked) == sorted(f"r{i}" for i in range(30))


# ---- through the scheduler ----------------------------------------------------------------------


def warm(sched: Scheduler, prompt: list[int]) -> None:
    """Run one request with ``prompt`` to completion, leaving it in the prefix cache."""
    sched.add_request(EngineRequest("warm", prompt, Params(1), arrival_time=0.0))
    now = 0.0
    while sched.has_unfinished():
        out = sched.schedule(now)
        sched.update(out, {c.request.request_id: 7 for c in out.chunks if c.sample}, now)
        now += 1.0


@pytest.mark.parametrize("backend", ["block", "radix"])
def test_a_95_percent_hit_overtakes_an_older_cold_request(backend):
    rng = random.Random(0)
    hot_prefix = [rng.randrange(3, 500) for _ in range(80)]
    cold = [rng.randrange(3, 500) for _ in range(80)]
    hot = hot_prefix[:76] + [1, 2, 1, 2]  # 76 of 80 tokens cached: group 9
    first = {}
    for policy in ("fcfs", "preble-priority"):
        kv = PagedKVBackend(200, 4) if backend == "block" else RadixKVBackend(200, 4)
        # one sequence at a time: the two requests contend for it
        sched = Scheduler(SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=256), kv, policy)
        warm(sched, hot_prefix)
        old = EngineRequest("old", cold, Params(2), arrival_time=10.0)
        new = EngineRequest("new", hot, Params(2), arrival_time=11.0)
        sched.add_request(old)
        sched.add_request(new)
        assert kv.peek_prefix(new.token_ids) == 76 and kv.peek_prefix(old.token_ids) == 0
        out = sched.schedule(20.0)
        first[policy] = [c.request.request_id for c in out.chunks]
        assert [r.request_id for r in sched.waiting] == [
            r for r in ("old", "new") if r not in first[policy]
        ]
    assert first == {"fcfs": ["old"], "preble-priority": ["new"]}


def test_scheduler_admits_the_quota_of_one_group_per_step():
    """12 hot (group 9) and 3 cold (group 0) requests, interleaved, base 1: each step admits
    up to 10 hot ones or 1 cold one, in turn; the rest keep their FCFS order in the queue."""
    rng = random.Random(1)
    prefix = [rng.randrange(3, 500) for _ in range(80)]
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=4096),
        PagedKVBackend(1000, 4),
        PrebleGroupPolicy(base=1),
    )
    warm(sched, prefix)  # the warm-up took group 0: the pointer is back at 9
    kinds = "hhchhhhchhhhhch"
    for i, k in enumerate(kinds):
        prompt = (
            prefix[:76] + [i, i, i, i] if k == "h" else [rng.randrange(3, 500) for _ in range(80)]
        )
        sched.add_request(EngineRequest(f"{k}{i:02d}", prompt, Params(50), arrival_time=10.0 + i))
    hot = [f"h{i:02d}" for i, k in enumerate(kinds) if k == "h"]
    cold = [f"c{i:02d}" for i, k in enumerate(kinds) if k == "c"]
    steps = []
    now = 20.0
    while sched.waiting:
        out = sched.schedule(now)
        steps.append(
            [
                c.request.request_id
                for c in out.chunks
                if c.request.timeline.first_scheduled_time == now
            ]
        )
        assert [r.seq_no for r in sched.waiting] == sorted(r.seq_no for r in sched.waiting)
        sched.update(out, {c.request.request_id: 7 for c in out.chunks if c.sample}, now)
        now += 1.0
    assert steps == [hot[:10], cold[:1], hot[10:], cold[1:2], cold[2:]]


# ---- the simulator's decode fast-forward ------------------------------------------------------


class LinearCost:
    def step_time_for(self, out) -> float:
        return 0.010 + 0.001 * out.num_tokens


def shared_prefix_workload(n=50, seed=0):
    """Prompts on 3 shared prefixes (or none) with private suffixes, in bursts: queues form and
    the cached fractions spread over many groups."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(3, 500) for _ in range(k)] for k in (24, 60, 96)] + [[]]
    reqs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(40.0) if i % 10 else 0.3
        prompt = rng.choice(prefixes) + [rng.randrange(3, 500) for _ in range(rng.randint(4, 40))]
        reqs.append(Request(f"r{i}", t, len(prompt), rng.randint(3, 60), prompt_token_ids=prompt))
    return reqs


def simulate(policy, fast_forward, cache, n_rep, seqs, budget):
    sched = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=seqs, max_model_len=4096)
    reps = [
        ReplicaConfig(
            LinearCost(),
            num_kv_blocks=160,
            block_size=4,
            prefix_cache=cache,
            scheduler=sched,
            queue_policy=policy,
        )
        for _ in range(n_rep)
    ]
    sim = Simulator(reps, RoundRobin(), fast_forward=fast_forward)
    return sim.run(shared_prefix_workload())


def overtaken(res) -> int:
    """Pairs on one replica where the later arrival was scheduled first."""
    by_rep: dict[int, list] = {}
    for r in res.requests:
        by_rep.setdefault(res.replica_of[r.request_id], []).append(r.timeline)
    return sum(
        1
        for tls in by_rep.values()
        for a in tls
        for b in tls
        if a.arrival_time < b.arrival_time and b.first_scheduled_time < a.first_scheduled_time
    )


@pytest.mark.parametrize(
    "cache, n_rep, seqs, budget", [("radix", 1, 4, 64), ("block", 2, 3, 48), ("radix", 2, 6, 32)]
)
def test_fast_forward_is_exact_with_preble_priority(cache, n_rep, seqs, budget):
    slow = simulate("preble-priority", False, cache, n_rep, seqs, budget)
    fast = simulate("preble-priority", True, cache, n_rep, seqs, budget)
    assert fast.fast_forwarded_steps > 0 and slow.fast_forwarded_steps == 0
    assert all(r.is_finished for r in slow.requests)
    assert fast.fingerprint() == slow.fingerprint()
    # not vacuous: the policy reorders admissions here, which FCFS never does
    assert overtaken(slow) > 0
    assert overtaken(simulate("fcfs", False, cache, n_rep, seqs, budget)) == 0


# ---- the engine -------------------------------------------------------------------------------


def test_engine_tokens_equal_fcfs(llama_dir, one_thread):
    from core.engine import LLM, SamplingParams

    g = torch.Generator().manual_seed(3)
    shared = torch.randint(3, 512, (24,), generator=g).tolist()
    tails = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (3, 9, 5, 14, 2, 7)]
    # cold prompts first, shared-prefix ones later: the policy admits them out of order
    prompts = [t + tails[0] for t in tails[1:3]] + [shared + t for t in tails]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs, admitted = {}, {}
    for policy in ("fcfs", "preble-priority"):
        llm = LLM(
            llama_dir,
            block_size=4,
            num_kv_blocks=128,
            max_num_seqs=2,
            max_num_batched_tokens=16,
            queue_policy=policy,
        )
        llm.generate([shared + [9]], params, use_tqdm=False)  # cache the shared prefix
        got = llm.generate(prompts, params, use_tqdm=False)
        outs[policy] = [o.token_ids for o in got]
        admitted[policy] = sorted(
            range(len(got)), key=lambda i: (got[i].metrics["first_scheduled_time"], i)
        )
    assert outs["fcfs"] == outs["preble-priority"]
    assert admitted["fcfs"] == list(range(len(prompts)))
    assert admitted["preble-priority"] != admitted["fcfs"]  # the order did change
