"""Real multi-replica serving: in-process and Ray fleets of tiny random llamas."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from core.cluster.replica import Replica, ReplicaServer, Submission
from core.cluster.replica import clock as replica_clock
from core.cluster.router import PrefixAffinity, RoundRobin, Router
from core.cluster.serving import Fleet, ReplicaSpec
from core.engine import LLM, SamplingParams
from core.metrics import RequestRecord, summarize
from core.sched.request import RequestStatus
from core.workload.schema import Interception, Request

TINY = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    # clear argmax gaps, so batching differences cannot flip a greedy token
    "initializer_range": 0.1,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SPEC = ReplicaSpec(TINY, dict(seed=0, block_size=4, num_kv_blocks=128, max_num_seqs=8))
OUT = 8


@pytest.fixture(autouse=True)
def keep_threads(restore_threads):
    """Replicas set torch's thread count in this process; each test leaves it as it found it."""


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


def workload(arrivals, outs=None, seed=0):
    ps = prompts([7 + 5 * i for i in range(len(arrivals))], seed)
    outs = outs or [OUT] * len(arrivals)
    return [
        Request(f"r{i}", a, len(p), n, prompt_token_ids=p)
        for i, (a, p, n) in enumerate(zip(arrivals, ps, outs, strict=True))
    ]


STREAM = workload([0.02 * i for i in range(6)])


@pytest.fixture(scope="module")
def reference():
    """Greedy tokens of one engine serving the whole stream at once."""
    llm = LLM(SPEC.model, **SPEC.engine)
    sp = SamplingParams(temperature=0.0, max_tokens=OUT, ignore_eos=True)
    outs = llm.generate([r.prompt_token_ids for r in STREAM], sp, use_tqdm=False)
    return {r.request_id: o.token_ids for r, o in zip(STREAM, outs, strict=True)}


def records(res):
    return [
        RequestRecord.from_request(r, replica=res.replica_of.get(r.request_id))
        for r in res.requests
    ]


class Recording(RoundRobin):
    """Round-robin that records completions, with the optional ``output_tokens`` keyword."""

    def __init__(self):
        super().__init__()
        self.finished = []

    def on_finish(self, replica, request_id, now, output_tokens=None):
        self.finished.append((replica, request_id, output_tokens))


def test_inprocess_fleet_serves_like_one_engine(reference):
    router = Recording()
    with Fleet([SPEC] * 2, router) as fleet:
        res = fleet.run(STREAM, time_scale=0.5)
    assert {r.request_id: r.output_token_ids for r in res.requests} == reference
    assert res.replica_of == {f"r{i}": i % 2 for i in range(6)}  # round-robin alternates
    assert sorted(router.finished) == sorted((i % 2, f"r{i}", OUT) for i in range(6))
    assert not res.failed and not res.timed_out
    assert [s.served for s in res.replicas] == [3, 3] and all(n > 0 for n in res.steps)
    assert res.total_steps == sum(res.steps) and all(t > 0 for t in res.busy_time)
    recs = records(res)
    for rec, req in zip(recs, STREAM, strict=True):  # timelines complete, since the run started
        assert rec.arrival == pytest.approx(req.arrival_time * 0.5, abs=1e-9)
        assert rec.completed and rec.output_tokens == OUT and len(rec.token_times) == OUT
        assert rec.arrival <= rec.first_token <= rec.finish <= res.makespan
    s = summarize(recs)
    assert s["num_completed"] == 6 and s["num_error"] == 0 and s["ttft_mean"] > 0


def test_replica_stops_on_any_eos_id_its_config_lists(reference):
    # HF configs may list several EOS ids (Llama 3 instruct: end of text, end of message, end of
    # turn); generation ends at whichever comes first, not only at the first id of the list
    req = STREAM[0]
    ref = reference[req.request_id]
    k = next((i for i in range(1, OUT) if ref[i] not in ref[:i]), 0)
    unused = next(t for t in range(3, 512) if t not in ref)
    spec = replace(SPEC, model={**TINY, "eos_token_id": [unused, ref[k]]})
    replica = Replica(0, spec)
    sp = SamplingParams(temperature=0.0, max_tokens=OUT)
    replica.submit([Submission(req.request_id, req.prompt_token_ids, sp, replica_clock())])
    done = []
    while not done:
        done = replica.pump()
    assert done[0].status == RequestStatus.FINISHED_STOPPED
    assert done[0].output_token_ids == ref[: k + 1]


def failing_step(engine, after):
    """Make ``engine.step`` raise on its ``after + 1``-th call."""
    real, calls = engine.step, []

    def step():
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("injected fault")
        return real()

    engine.step = step


def test_inprocess_replica_failure_fails_only_its_requests():
    stream = workload([0.0, 0.01, 0.3, 0.31, 0.32])
    with Fleet([SPEC] * 2, "round-robin") as fleet:
        failing_step(fleet.replica(1).engine, after=1)  # prefill runs, the first decode raises
        res = fleet.run(stream)
        assert fleet.failed == {1: "RuntimeError: injected fault"}
    assert res.failed == {1: "RuntimeError: injected fault"}
    assert res.replicas[1].failed == "RuntimeError: injected fault"
    by_id = {r.request_id: r for r in res.requests}
    dead = by_id["r1"]
    assert dead.status == RequestStatus.FINISHED_ERROR
    assert dead.error == "replica 1 died: RuntimeError: injected fault"
    assert dead.num_output_tokens == 1  # the partial output is kept
    # later arrivals see only the live replica
    assert res.replica_of == {"r0": 0, "r1": 1, "r2": 0, "r3": 0, "r4": 0}
    for rid in ("r0", "r2", "r3", "r4"):
        assert by_id[rid].status == RequestStatus.FINISHED_LENGTH
    s = summarize(records(res))
    assert s["num_completed"] == 4 and s["num_error"] == 1


def test_no_live_replica_fails_arrivals_at_once():
    with Fleet([SPEC], "least-work") as fleet:
        failing_step(fleet.replica(0).engine, after=0)
        res = fleet.run(workload([0.0, 0.05]))
    first, second = res.requests
    assert first.error == "replica 0 died: RuntimeError: injected fault"
    assert second.status == RequestStatus.FINISHED_ERROR
    assert second.error == "no live replica (replica 0 died: RuntimeError: injected fault)"
    assert "r1" not in res.replica_of
    records(res)  # valid timelines


def test_timeout_fails_unfinished_requests_and_fleet_recovers():
    stream = workload([0.0, 30.0], outs=[240, 4])  # 240 decode steps take far over 20 ms
    with Fleet([SPEC], "round-robin") as fleet:
        res = fleet.run(stream, timeout_s=0.02)
        assert res.timed_out and res.wall_s < 5
        running, unsent = res.requests
        assert running.error == "fleet timed out after 0.02 s"
        assert unsent.error == "fleet timed out after 0.02 s before it arrived"
        records(res)
        again = fleet.run(workload([0.0]))  # the aborted request left nothing behind
    assert again.requests[0].status == RequestStatus.FINISHED_LENGTH


def test_paused_request_resumes_on_an_idle_replica():
    # the only request pauses for a tool call: the replica must wake up by itself to resume it
    p = prompts([9])[0]
    req = Request(
        "tool",
        0.0,
        9,
        6,
        prompt_token_ids=p,
        interceptions=[Interception(after_output_tokens=2, duration_s=0.05, returned_tokens=2)],
    )
    with Fleet([SPEC], "round-robin") as fleet:
        res = fleet.run([req], timeout_s=10)
    (rec,) = records(res)
    assert rec.completed and rec.output_tokens == 6 and rec.pauses == 1
    assert rec.e2e >= 0.05 and not res.timed_out


def test_replica_server_loop_reports_its_death():
    # the Ray actor's body, in-process: its background loop serves, then dies on a fault
    server = ReplicaServer(3, SPEC)
    try:
        failing_step(server.replica.engine, after=3)
        reqs = workload([0.0, 0.0], outs=[2, 50])
        sp = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
        server.exchange(
            [
                Submission(
                    r.request_id,
                    r.prompt_token_ids,
                    replace(sp, max_tokens=r.output_len),
                    replica_clock(),
                )
                for r in reqs
            ]
        )
        done, deadline = [], time.monotonic() + 10
        while len(done) < 2 and time.monotonic() < deadline:
            ex = server.exchange()
            done += ex.finished
            time.sleep(0.01)
        assert ex.load.error == "RuntimeError: injected fault"
        assert ex.load.outstanding_requests == 0
        short, long = sorted(done, key=lambda r: r.request_id)
        assert short.status == RequestStatus.FINISHED_LENGTH and short.num_output_tokens == 2
        assert long.error == "replica 3 died: RuntimeError: injected fault"
        late = server.exchange([Submission("late", [5, 6, 7], sp, replica_clock())])
        assert [r.error for r in late.finished] == [long.error]
    finally:
        server.stop()


# -- Ray ------------------------------------------------------------------------------------------


class Switch(Router):
    """Delegates to ``inner``, which a test may replace (one Ray fleet serves several tests)."""

    def __init__(self, inner):
        self.inner = inner

    def route(self, req, replicas, now):
        return self.inner.route(req, replicas, now)


@pytest.fixture(scope="module")
def ray_fleet():
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    t = time.perf_counter()
    try:
        fleet = Fleet([SPEC] * 2, Switch(RoundRobin()), backend="ray")
    except RuntimeError as exc:
        if str(exc).startswith("Ray could not start"):
            pytest.skip(str(exc))
        raise
    fleet.start_s = time.perf_counter() - t
    yield fleet
    fleet.close()


@pytest.mark.slow
def test_ray_fleet_serves_like_in_process(ray_fleet, reference):
    res = ray_fleet.run(STREAM)
    assert {r.request_id: r.output_token_ids for r in res.requests} == reference
    assert res.replica_of == {f"r{i}": i % 2 for i in range(6)}
    for s in res.replicas:  # one machine: the measured offset is within its bound (+ slack)
        assert abs(s.clock_offset_s) <= s.clock_error_s + 0.005
    recs = records(res)
    for rec, req in zip(recs, STREAM, strict=True):
        assert rec.arrival == pytest.approx(req.arrival_time, abs=1e-9)
        assert rec.completed and len(rec.token_times) == OUT
    assert summarize(recs)["num_completed"] == 6


@pytest.mark.slow
def test_ray_prefix_router_reads_remote_caches(ray_fleet):
    ray_fleet.router.inner = PrefixAffinity()
    p, q = prompts([32, 32], seed=2)
    tail = prompts([5], seed=3)[0]
    stream = [
        Request(f"s{i}", a, len(x), 4, prompt_token_ids=x)
        for i, (a, x) in enumerate([(0.0, p), (0.001, q), (0.4, p + tail), (0.41, q + tail)])
    ]
    res = ray_fleet.run(stream)
    # s1 sees s0 queued on replica 0 (sent, not yet acknowledged); s2, s3 follow their caches
    assert [res.replica_of[f"s{i}"] for i in range(4)] == [0, 1, 0, 1]
    assert [r.num_cached_tokens > 0 for r in res.requests] == [False, False, True, True]


@pytest.mark.slow
def test_ray_killed_actor_fails_its_requests(ray_fleet):
    import ray

    # replica 1 gets long requests; it is killed when the first (short) request finishes
    stream = workload([0.0, 0.01, 0.02, 0.03, 1.5, 1.51], outs=[4, 64, 4, 64, 4, 4], seed=1)
    killed = []

    def progress(n):
        if not killed:
            killed.append(True)
            ray.kill(ray_fleet.replica(1))

    ray_fleet.router.inner = RoundRobin()
    res = ray_fleet.run(stream, progress=progress, timeout_s=60)
    assert killed and not res.timed_out and res.wall_s < 30
    assert set(res.failed) == {1}
    by_id = {r.request_id: r for r in res.requests}
    for rid in ("r1", "r3"):
        assert by_id[rid].status == RequestStatus.FINISHED_ERROR
        assert by_id[rid].error == f"replica 1 died: {res.failed[1]}"
    assert [res.replica_of[f"r{i}"] for i in range(6)] == [0, 1, 0, 1, 0, 0]
    for rid in ("r0", "r2", "r4", "r5"):
        assert by_id[rid].status == RequestStatus.FINISHED_LENGTH
    s = summarize(records(res))
    assert s["num_completed"] == 4 and s["num_error"] == 2
