"""dLoRA's policies on scripted queues and small instances: credit accounting, threshold
adaptation, placement, the migration ILP against brute force and its time limit."""

import random
from functools import partial

import pytest

from artifacts.dlora.batching import DLoRAScheduler
from artifacts.dlora.migration import (
    MigrationController,
    MigrationProblem,
    MovableRequest,
    brute_force_migration,
    solve_migration,
)
from artifacts.dlora.placement import AdapterRouter, burst_tolerance, place_adapters
from core.cluster.router import RouteRequest
from core.kv.backend import PagedKVBackend
from core.lora import LinearStepCost, LoRACostModel, LoRAProfile, LoRARequest
from core.sched.request import EngineRequest
from core.sched.scheduler import SchedulerConfig
from core.sim import ReplicaConfig, SimSampling, Simulator
from core.workload.schema import Request


def scheduler(max_num_seqs=4, **kw):
    kv = PagedKVBackend(256, 16, enable_prefix_caching=False)
    return DLoRAScheduler(SchedulerConfig(max_num_seqs=max_num_seqs), kv, **kw)


def add(s, rid, adapter, t):
    lora = None if adapter is None else LoRARequest(adapter, 1 + ord(adapter[0]))
    s.add_request(
        EngineRequest(rid, [1, 2, 3], SimSampling(max_tokens=50), arrival_time=t, lora=lora)
    )


def test_long_queue_is_merged_and_displaced_adapters_earn_credit():
    s = scheduler(max_num_seqs=4, rho=0.5)
    add(s, "b0", "b", 0.0)  # the oldest request is b's
    for i in range(6):
        add(s, f"a{i}", "a", 1.0 + i)
    out = s.schedule(2.0)
    assert out.lora_step.merged == "a" and out.lora_step.num_switch_ops == 1
    assert {c.request.request_id for c in out.chunks} == {"a0", "a1", "a2", "a3"}
    # F = b0 a0 a1 a2; b0 was displaced by a3 at the merged cost 1 / (rho B) = 0.5
    assert s.credits["b"] == pytest.approx(0.5) and s.credits["a"] == pytest.approx(-0.5)


def test_credit_above_threshold_is_served_first_unmerged():
    s = scheduler(max_num_seqs=4, rho=0.5, credit_high=1.0, credit_low=0.5)
    add(s, "b0", "b", 0.0)
    for i in range(6):
        add(s, f"a{i}", "a", 1.0 + i)
    s.credits["b"] = 1.2
    out = s.schedule(2.0)
    assert out.lora_step.merged is None
    assert "b0" in {c.request.request_id for c in out.chunks}
    assert s.mode_iters["credit"] == 1


def test_short_queues_run_unmerged_fcfs():
    s = scheduler(max_num_seqs=4)
    for i, a in enumerate("abcd"):
        add(s, f"{a}0", a, float(i))
    out = s.schedule(5.0)
    assert out.lora_step.merged is None and len(out.chunks) == 4


def test_thresholds_adapt_aimd():
    s = scheduler(max_num_seqs=4, rho=0.5, switch_cost=1.0)
    s.theta_r, s.theta_l = 1.0, 0.5
    # merged would serve 4 per iteration at 0.5 each (+1 switch): 40 / 6 > unmerged's 1
    s.window.iters, s.window.merged_reqs, s.window.unmerged_reqs, s.window.switches = 10, 40, 10, 1
    s._adapt()
    assert s.theta_r == pytest.approx(0.95) and s.theta_l == pytest.approx(0.5 / 1.1)
    assert s.window.iters == 0  # a fresh window
    # merged would switch every iteration: 10 / (5 + 10) < unmerged's 4
    s.window.iters, s.window.merged_reqs, s.window.unmerged_reqs, s.window.switches = 10, 10, 40, 10
    s._adapt()
    assert s.theta_r == pytest.approx(0.95 * 1.1)
    assert s.theta_l == pytest.approx(0.5 / 1.1 + 0.05)
    assert len(s.window.history) == 2


def test_thresholds_drop_while_one_adapter_dominates():
    s = scheduler(max_num_seqs=4, rho=0.5, adapt_every=4)
    for i in range(3):
        add(s, f"a{i}", "a", float(i))
    add(s, "b0", "b", 3.0)  # |Q_a| = 3 < theta_R |F| = 4: unmerged at first
    for _ in range(40):
        s.schedule(5.0)
    assert s.theta_r < 1.0  # merging a would have served 3 per half iteration vs 4 per one
    assert s.mode_iters["merged"] > 0


def test_dlora_serves_everything_in_the_simulator():
    reqs = [
        Request(f"q{i}", i * 0.005, 6, 5, metadata={"lora": LoRARequest(f"ad{min(i % 5, 2)}", 1)})
        for i in range(60)
    ]
    cost = LoRACostModel(LinearStepCost(0.01, 0, 0.001), LoRAProfile(0, 0.002, 0.0005, 0.02, 0.02))
    cfg = ReplicaConfig(
        cost,
        num_kv_blocks=40,
        scheduler=SchedulerConfig(max_num_seqs=8),
        prefix_cache="none",
        scheduler_factory=partial(DLoRAScheduler, rho=0.6),
    )
    sim = Simulator([cfg])
    res = sim.run(reqs)
    assert all(r.num_output_tokens == 5 for r in res.requests)
    sched = sim.replicas[0].scheduler
    assert sched.mode_iters["merged"] > 0 and sched.mode_iters["unmerged"] > 0


def test_placement_replicates_popular_adapters():
    pop = {"hot": 0.7, "warm": 0.2, "cold": 0.1}
    p = place_adapters(pop, n_replicas=4, capacity=2)
    assert all(any(k in r for r in p) for k in pop)
    assert all(len(r) <= 2 for r in p)
    hosts = {k: sum(k in r for r in p) for k in pop}
    assert hosts["hot"] >= hosts["warm"] >= hosts["cold"]
    single = place_adapters(pop, 4, 2, replicate=False)
    assert burst_tolerance(p, pop, [1] * 4) > burst_tolerance(single, pop, [1] * 4)
    with pytest.raises(ValueError, match="do not fit"):
        place_adapters({f"a{i}": 1 for i in range(9)}, 4, 2)


def test_router_sends_requests_only_to_hosts():
    class View:
        def __init__(self, i, load):
            self.index, self.load = i, load

        def outstanding_tokens(self):
            return self.load

        def outstanding_requests(self):
            return self.load

        def cached_prefix(self, ids):
            return 0

    views = [View(0, 5), View(1, 9), View(2, 1)]
    r = AdapterRouter([{"a"}, {"a", "b"}, {"b"}], {"x": "a", "y": "b"})
    assert r.route(RouteRequest("x", [1], 1), views, 0) == 0
    assert r.route(RouteRequest("y", [1], 1), views, 0) == 2
    rr = AdapterRouter([{"a"}, {"a"}, {"b"}], {"x": "a"}, mode="round-robin")
    assert [rr.route(RouteRequest("x", [1], 1), views, 0) for _ in range(3)] == [0, 1, 0]


def random_problem(seed, n_req=5, n_rep=3, n_ad=3):
    rng = random.Random(seed)
    ads = [f"k{i}" for i in range(n_ad)]
    reqs = [
        MovableRequest(
            f"r{i}",
            rng.choice(ads),
            rng.randrange(n_rep),
            rng.uniform(0.5, 3),
            rng.randrange(10, 60),
            rng.uniform(0, 0.3),
        )
        for i in range(n_req)
    ]
    hosted = [set(rng.sample(ads, 2)) for _ in range(n_rep)]
    for r in reqs:
        hosted[r.src].add(r.adapter)
    return MigrationProblem(
        load_s=[rng.uniform(0, 5) for _ in range(n_rep)],
        free_kv_tokens=[rng.uniform(20, 120) for _ in range(n_rep)],
        capacity=[max(3, len(h)) for h in hosted],
        hosted=hosted,
        requests=reqs,
        adapter_load_s=rng.uniform(0, 1),
        overflow_s_per_token=0.02,
        pinned={(rng.choice(ads), rng.randrange(n_rep))}
        & {(k, j) for j, h in enumerate(hosted) for k in h},
    )


@pytest.mark.parametrize("seed", range(8))
def test_ilp_matches_brute_force(seed):
    problem = random_problem(seed)
    sol = solve_migration(problem, time_limit_s=20)
    best = brute_force_migration(problem)
    assert sol.status == "optimal"
    assert sol.makespan == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert sol.makespan <= sol.current_makespan + 1e-9
    for r, j in zip(problem.requests, sol.assign, strict=True):
        assert r.adapter in sol.adapters_on[j]


def test_ilp_time_limit_is_respected():
    problem = random_problem(1, n_req=120, n_rep=8, n_ad=24)
    sol = solve_migration(problem, time_limit_s=0.5)
    assert sol.solve_s < 5  # the limit plus building the model
    assert sol.makespan <= sol.current_makespan + 1e-9  # never worse than staying


def test_controller_moves_queued_requests_off_a_hot_replica():
    n = 40
    reqs = [Request(f"q{i}", 0.0, 16, 8, metadata={"lora": LoRARequest("a", 1)}) for i in range(n)]
    adapter_of = {r.request_id: "a" for r in reqs}
    placement = [{"a"}, {"b"}]
    ctrl = MigrationController(
        placement, adapter_of, capacity=2, sec_per_token=0.001, interval_s=0.05, queue_gap=4
    )
    cost = LinearStepCost(0.01, 0.0, 0.001)
    cfgs = [
        ReplicaConfig(
            cost, num_kv_blocks=64, scheduler=SchedulerConfig(max_num_seqs=4), prefix_cache="none"
        )
        for _ in range(2)
    ]
    router = AdapterRouter(placement, adapter_of)
    res = Simulator(cfgs, router, controller=ctrl).run(reqs)
    assert all(r.num_output_tokens == 8 for r in res.requests)
    assert ctrl.log and any(e["moves"] for e in ctrl.log)
    assert set(res.replica_of.values()) == {0, 1} and "a" in placement[1]
    alone = Simulator([cfgs[0]], AdapterRouter([{"a"}], adapter_of)).run(reqs)
    assert res.makespan < alone.makespan
