"""Decode runs: ``decode_run_limit`` and ``DecodeRun.advance`` leave the scheduler, its requests
and its KV backend (block ids, hashes, free-queue order) exactly as stepping one step at a time
does, at every point a simulator may look at them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.kv.backend import PagedKVBackend, RadixKVBackend
from core.sched import EngineRequest, Scheduler, SchedulerConfig
from core.sched.decode_run import DecodeRun, decode_run_limit
from core.workload import Interception
from tests.fakes import Params

DT = 1 / 64  # every step takes this long: exact times


def token(rid: str, k: int, shared: bool) -> int:
    """The k-th output token; ``shared`` requests all generate the same tokens (so their
    blocks collide in the prefix cache)."""
    return (k * 7 + (0 if shared else len(rid) * 13 + ord(rid[-1]))) % 97 + 3


@dataclass(frozen=True)
class Spec:
    rid: str
    prompt: tuple[int, ...]
    max_tokens: int
    arrival_step: int
    icps: tuple[tuple[int, int, int], ...] = ()  # (after, duration in steps, returned tokens)
    shared: bool = False


def build(specs, backend, **cfg):
    kv = (
        PagedKVBackend(cfg.pop("blocks"), cfg.pop("bs"), num_host_blocks=cfg.pop("host", 0))
        if backend == "paged"
        else RadixKVBackend(cfg.pop("blocks"), cfg.pop("bs"))
    )
    cfg.pop("host", None)
    return Scheduler(SchedulerConfig(vocab_size=500, **cfg), kv)


def engine_request(s: Spec) -> EngineRequest:
    icps = [
        Interception(a, d * DT, r, returned_token_ids=tuple(range(400, 400 + r)))
        for a, d, r in s.icps
    ]
    return EngineRequest(
        s.rid,
        list(s.prompt),
        Params(s.max_tokens),
        arrival_time=s.arrival_step * DT,
        interceptions=icps,
    )


def snapshot(sched: Scheduler):
    reqs = tuple(
        (
            r.request_id,
            r.status.value,
            r.num_computed_tokens,
            r.max_computed_tokens,
            tuple(r.token_ids),
            tuple(r.output_token_ids),
            tuple(r.timeline.token_times),
            r.timeline.first_token_time,
            r.timeline.finish_time,
            r.timeline.recomputed_tokens,
            r.timeline.num_preemptions,
            r.timeline.num_pauses,
            r.next_interception,
            r.num_cached_tokens,
        )
        for r in sched.requests.values()
    )
    queues = tuple(
        tuple(r.request_id for r in q)
        for q in (sched.waiting, sched.running, sched.swapped, sched.paused)
    )
    kv = sched.kv
    if isinstance(kv, PagedKVBackend):
        m = kv.manager
        state = (
            tuple((b.block_id, b.block_hash, b.ref_cnt) for b in m.pool.free_queue),
            tuple(sorted((h, b.block_id) for h, b in m.pool.cached.items())),
            tuple(
                sorted(
                    (
                        rid,
                        tuple(b.block_id for b in r.blocks),
                        r.num_tokens,
                        tuple(r.block_hashes),
                        r.swapped,
                    )
                    for rid, r in m._reqs.items()
                )
            ),
            (m.stats.query_tokens, m.stats.hit_tokens, m.pool.stats.evicted),
        )
    else:
        c = kv.cache
        state = (
            tuple(sorted(kv.blocks._free)),
            tuple(
                sorted(
                    (rid, tuple(kv.block_table(r)))
                    for rid, r in sched.requests.items()
                    if rid in kv._held
                )
            ),
            tuple((c.node_tokens(n), c.node_values(n), n.last_access) for n in c.iter_nodes()),
            kv.hit_rate,
        )
    return reqs, queues, state


def drive(specs, backend, use_runs, rng=None, bump=None, **cfg):
    """Run the requests to completion on one scheduler (arrivals at their steps, a fixed step
    time), with or without decode runs; the snapshots after every schedule(), keyed by time.

    With runs, each run is advanced in random pieces and randomly cut short, as arrivals
    would. ``bump``: (request id, tokens) raises that request's high-water mark once, right
    after its first sampled token (so its later decodes count as recomputed)."""
    sched = build(specs, backend, **cfg)
    pending = sorted(specs, key=lambda s: (s.arrival_step, s.rid))
    shared = {s.rid: s.shared for s in specs}
    snaps: dict[float, object] = {}
    now, bumped = 0.0, False
    runs = 0

    def admit(t):
        while pending and pending[0].arrival_step * DT <= t:
            sched.add_request(engine_request(pending.pop(0)))

    def sample(out):
        return {
            c.request.request_id: token(
                c.request.request_id, c.request.num_output_tokens, shared[c.request.request_id]
            )
            for c in out.chunks
            if c.sample
        }

    def maybe_bump():
        nonlocal bumped
        if bump and not bumped:
            r = sched.requests.get(bump[0])
            if r is not None and r.num_output_tokens:
                r.max_computed_tokens += bump[1]
                bumped = True

    for _ in range(20_000):
        admit(now)
        if not sched.has_unfinished() and not pending:
            break
        out = sched.schedule(now)
        snaps[now] = snapshot(sched)
        if out.is_empty:
            nxt = [
                t
                for t in (
                    sched.next_event_time(),
                    pending[0].arrival_step * DT if pending else None,
                )
                if t is not None
            ]
            now = max(now, min(nxt))
            continue
        k = 1
        if use_runs:
            ends_of = lambda k, t=now: [t + DT * (i + 1) for i in range(k)]  # noqa: E731
            k = decode_run_limit(sched, out, step_ends=ends_of)
            # an arrival during the run cuts it: the run may not cover steps starting after it
            if pending and k > 1:
                first = pending[0].arrival_step * DT
                k = min(k, 1 + sum(1 for e in ends_of(k)[: k - 1] if e < first))
        if k == 1:
            sched.update(out, sample(out), now + DT)
            maybe_bump()
            now += DT
            continue
        runs += 1
        ends = [now + DT * (i + 1) for i in range(k)]
        toks = {}
        for c in out.chunks:
            r = c.request
            toks[r.request_id] = [
                token(r.request_id, r.num_output_tokens + i, shared[r.request_id]) for i in range(k)
            ]
        run = DecodeRun(sched, out, k, ends, toks)
        while run.updated < run.steps:
            m = rng.randint(run.updated, run.steps)
            if m < run.steps:
                run.advance(m)
                if m:
                    assert snapshot(sched) == snaps_ref_hook(ends[m - 1], sched)
                if rng.random() < 0.3:
                    run.truncate(run.updated + 1)
            else:
                run.advance(m)
        now = ends[run.steps - 1]
    else:
        raise AssertionError("no progress")
    return snaps, sched, runs


_REF: dict[float, object] = {}


def snaps_ref_hook(t, sched):
    """The step-by-step snapshot at ``t`` (set by the test before driving with runs)."""
    return _REF[t]


def compare(specs, backend, seed=0, bump=None, **cfg):
    ref, ref_sched, _ = drive(specs, backend, False, bump=bump, **cfg)
    _REF.clear()
    _REF.update(ref)
    got, sched, runs = drive(specs, backend, True, random.Random(seed), bump=bump, **cfg)
    for t, snap in got.items():
        assert snap == ref[t], f"state differs at t={t}"
    assert snapshot(sched) == snapshot(ref_sched)
    assert all(r.is_finished for r in sched.requests.values())
    return runs


def prompts(rng, n, shared_prefix=()):
    return tuple(shared_prefix) + tuple(rng.randrange(3, 300) for _ in range(n))


def mixed_specs(seed, n=6, icps=True, shared=True):
    rng = random.Random(seed)
    common = prompts(rng, 9)
    specs = []
    for i in range(n):
        pre = common if (shared and i % 2) else ()
        icp = ()
        if icps and i % 3 == 0:
            icp = ((rng.randint(2, 6), rng.randint(0, 4), rng.randint(0, 7)),)
        specs.append(
            Spec(
                f"r{i}",
                prompts(rng, rng.randint(1, 20), pre),
                rng.randint(1, 40),
                rng.randint(0, 60),
                icp,
                shared=shared and i % 2 == 1,
            )
        )
    return specs


# fmt: off
CONFIGS = {
    "paged-roomy": dict(backend="paged", blocks=200, bs=4, max_num_batched_tokens=32,
                        max_num_seqs=8, max_model_len=512),
    "paged-tight": dict(backend="paged", blocks=18, bs=4, max_num_batched_tokens=32,
                        max_num_seqs=8, max_model_len=512),
    "paged-swap": dict(backend="paged", blocks=18, bs=4, host=100, max_num_batched_tokens=32,
                       max_num_seqs=8, max_model_len=512, preemption_mode="swap"),
    "paged-bs1": dict(backend="paged", blocks=300, bs=1, max_num_batched_tokens=16,
                      max_num_seqs=8, max_model_len=512),
    "paged-seqs2": dict(backend="paged", blocks=200, bs=4, max_num_batched_tokens=64,
                        max_num_seqs=2, max_model_len=512),
    "paged-short-model-len": dict(backend="paged", blocks=200, bs=4, max_num_batched_tokens=32,
                                  max_num_seqs=8, max_model_len=30),
    "radix-roomy": dict(backend="radix", blocks=200, bs=4, max_num_batched_tokens=32,
                        max_num_seqs=8, max_model_len=512),
    "radix-tight": dict(backend="radix", blocks=18, bs=2, max_num_batched_tokens=32,
                        max_num_seqs=8, max_model_len=512),
}
# fmt: on


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_runs_leave_the_same_state_as_steps(name, seed):
    cfg = dict(CONFIGS[name])
    backend = cfg.pop("backend")
    runs = compare(mixed_specs(seed), backend, seed=seed, **cfg)
    assert runs > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    name=st.sampled_from(sorted(CONFIGS)),
    n=st.integers(1, 8),
    icps=st.booleans(),
    shared=st.booleans(),
)
def test_runs_match_steps_on_random_workloads(seed, name, n, icps, shared):
    cfg = dict(CONFIGS[name])
    backend = cfg.pop("backend")
    compare(mixed_specs(seed, n, icps, shared), backend, seed=seed, **cfg)


def identical_content_specs(seed):
    """Requests with the same prompt (some one token longer) generating the same tokens, on a
    tight pool: their blocks get equal hashes while freed copies sit in the free queue, so
    the order in which a run registers hashes and pops free blocks must be the step loop's."""
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    common = tuple(rng.randrange(3, 300) for _ in range(rng.choice([3, 4, 5, 8])))
    specs = [
        Spec(
            f"r{i}",
            common + tuple(rng.randrange(3, 300) for _ in range(rng.choice([0, 0, 1]))),
            rng.randint(3, 25),
            rng.randint(0, 40),
            (),
            shared=True,
        )
        for i in range(n)
    ]
    return specs, rng.randint(8, 20)


@pytest.mark.parametrize("seed", [17, 30, 37])
def test_hash_registration_and_eviction_order_in_runs(seed):
    specs, blocks = identical_content_specs(seed)
    compare(
        specs,
        "paged",
        seed=seed,
        blocks=blocks,
        bs=4,
        max_num_batched_tokens=32,
        max_num_seqs=8,
        max_model_len=512,
    )


def test_recomputed_decodes_are_counted_like_steps():
    specs = [Spec("a", tuple(range(3, 13)), 30, 0), Spec("b", tuple(range(20, 25)), 30, 0)]
    runs = compare(
        specs,
        "paged",
        bump=("a", 12),
        blocks=100,
        bs=4,
        max_num_batched_tokens=32,
        max_num_seqs=8,
        max_model_len=512,
    )
    assert runs > 0
    ref, sched, _ = drive(
        specs,
        "paged",
        False,
        bump=("a", 12),
        blocks=100,
        bs=4,
        max_num_batched_tokens=32,
        max_num_seqs=8,
        max_model_len=512,
    )
    assert sched.requests["a"].timeline.recomputed_tokens > 0


# ---- decode_run_limit -------------------------------------------------------------------------


def decoding(
    n_req=2,
    max_tokens=20,
    blocks=100,
    bs=4,
    icps=None,
    ignore_eos=True,
    stop=(),
    seqs=8,
    budget=32,
    waiting=0,
    model_len=512,
    budget_after=None,
):
    """A scheduler whose next step is a pure decode of ``n_req`` requests (prompts of 6)."""
    sched = Scheduler(
        SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=seqs, max_model_len=model_len),
        PagedKVBackend(blocks, bs),
    )
    for i in range(n_req):
        req = EngineRequest(
            f"r{i}",
            list(range(3 + i, 9 + i)),
            Params(max_tokens, ignore_eos=ignore_eos, stop_token_ids=stop),
            interceptions=list(icps or []),
        )
        req.eos_token_id = 2
        sched.add_request(req)
    out = sched.schedule(0.0)
    sched.update(out, {c.request.request_id: 50 for c in out.chunks}, DT)
    for i in range(waiting):
        sched.add_request(EngineRequest(f"w{i}", [7] * 6, Params(5)))
    if budget_after is not None:
        sched.config.max_num_batched_tokens = budget_after
    return sched, sched.schedule(DT)


def test_limit_is_the_first_finish_or_interception():
    sched, out = decoding(max_tokens=20)
    assert [c.num_tokens for c in out.chunks] == [1, 1]
    # 1 token sampled by the prefill; the run's step s samples token 1 + s: the 19th finishes
    assert decode_run_limit(sched, out) == 19
    assert decode_run_limit(sched, out, max_steps=5) == 5
    sched, out = decoding(
        icps=[Interception(after_output_tokens=7, duration_s=1.0, returned_tokens=2)]
    )
    assert decode_run_limit(sched, out) == 6
    sched, out = decoding(max_tokens=50, model_len=20)  # 6 + 1 tokens now; 20 after step 13
    assert decode_run_limit(sched, out) == 13


def test_limit_stops_before_kv_runs_out():
    sched, out = decoding(max_tokens=40, blocks=12, bs=4)  # 2 requests hold 2 blocks each
    free = sched.kv.num_free_blocks
    k = decode_run_limit(sched, out)
    assert 1 < k < 39
    # contexts are 6 in step 1: after step s a request holds ceil((6 + s) / 4) blocks
    need = lambda j: 2 * ((6 + j + 3) // 4 - (6 + 1 + 3) // 4)  # noqa: E731
    assert need(k) <= free < need(k + 1)


def test_no_run_when_something_could_change_the_batch():
    sched, out = decoding(ignore_eos=False)
    assert decode_run_limit(sched, out) == 1  # EOS could end a request any step
    sched, out = decoding(stop=(60,))
    assert decode_run_limit(sched, out) == 1
    sched, out = decoding(waiting=1)
    assert decode_run_limit(sched, out) == 1  # the next step would admit it
    sched, out = decoding(waiting=1, seqs=2)
    assert decode_run_limit(sched, out) == 19  # no room for it while these run
    sched, out = decoding(waiting=1, budget_after=2)
    assert decode_run_limit(sched, out) == 19  # no token budget left for it
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=32), PagedKVBackend(50, 4))
    sched.add_request(EngineRequest("p", list(range(3, 13)), Params(5)))
    assert decode_run_limit(sched, sched.schedule(0.0)) == 1  # a prefill


def test_limit_stops_before_a_paused_request_resumes():
    sched, out = decoding(n_req=3, icps=None, max_tokens=40)
    sched.update(out, {c.request.request_id: 50 for c in out.chunks}, 2 * DT)
    sched.pause("r2", 2 * DT, resume_time=10 * DT)
    out = sched.schedule(2 * DT)
    assert decode_run_limit(sched, out) == 1  # no step times: cannot tell
    ends = lambda k: [2 * DT + DT * (i + 1) for i in range(k)]  # noqa: E731
    # steps start at 2, 3, ..., 9 DT before the resume at 10 DT; the step at 10 DT resumes it
    assert decode_run_limit(sched, out, step_ends=ends) == 8


def test_a_scheduler_class_gets_runs_only_if_it_declares_them():
    class Declares(Scheduler):
        supports_decode_runs = True

    class Refuses(Scheduler):
        supports_decode_runs = False

    class Silent(Scheduler):  # changes what a step does and does not say: no runs
        def update(self, out, sampled, now, logprobs=None):
            return super().update(out, sampled, now, logprobs)

    class Inherits(Declares):  # the capability is declared per class
        pass

    for cls, runs in (
        (Scheduler, True),
        (Declares, True),
        (Refuses, False),
        (Silent, False),
        (Inherits, False),
    ):
        assert cls.supports_decode_runs is runs
        sched, out = decoding()
        sched.__class__ = cls
        assert decode_run_limit(sched, out) == (19 if runs else 1), cls.__name__


class Calls(PagedKVBackend):
    """Records the calls a decode run makes (undeclared: gets every call)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def allocate(self, req, num_new_tokens, lookup, now):
        self.calls.append(("allocate", req.request_id, num_new_tokens, now))
        return super().allocate(req, num_new_tokens, lookup, now)

    def on_scheduled(self, req, start, num_tokens, now):
        self.calls.append(("on_scheduled", req.request_id, start, now))


class MergedCalls(Calls):
    mergeable_decode_calls = True


class EveryCall(Calls):
    mergeable_decode_calls = False


def test_a_backend_gets_merged_calls_only_if_it_declares_them():
    assert PagedKVBackend.mergeable_decode_calls and not RadixKVBackend.mergeable_decode_calls
    assert not Calls.mergeable_decode_calls
    results = {}
    for cls in (MergedCalls, EveryCall, Calls):
        sched = Scheduler(SchedulerConfig(max_num_batched_tokens=32), cls(100, 4))
        for i in range(2):
            sched.add_request(EngineRequest(f"r{i}", list(range(3 + i, 9 + i)), Params(20)))
        out = sched.schedule(0.0)
        sched.update(out, {c.request.request_id: 50 for c in out.chunks}, DT)
        out = sched.schedule(DT)
        k = decode_run_limit(sched, out)
        assert k == 19
        sched.kv.calls.clear()
        DecodeRun(
            sched,
            out,
            k,
            [DT * (i + 2) for i in range(k)],
            {c.request.request_id: [60] * k for c in out.chunks},
        ).advance(k)
        results[cls] = sched.kv.calls, snapshot(sched)
    merged, every, undeclared = (results[c][0] for c in (MergedCalls, EveryCall, Calls))
    # steps 2..19 of each request: one call each, or only those that start or fill a block
    assert len(every) == 2 * 2 * (k - 1) and undeclared == every
    assert not any(c[0] == "on_scheduled" for c in merged)
    assert len(merged) < len([c for c in every if c[0] == "allocate"])
    assert sum(c[2] for c in merged) == sum(c[2] for c in every if c[0] == "allocate")
    assert len({results[c][1] for c in results}) == 1  # the same state either way
