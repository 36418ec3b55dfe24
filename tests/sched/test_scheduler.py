"""The scheduler without a model: budgets, chunking, preemption, policies, conservation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kv.backend import PagedKVBackend, RadixKVBackend
from core.sched import EngineRequest, RequestStatus, Scheduler, SchedulerConfig
from tests.fakes import Params, fake_token


def run(sched: Scheduler, max_steps: int = 10_000) -> list:
    steps = []
    now = 0.0
    while sched.has_unfinished():
        out = sched.schedule(now)
        steps.append(out)
        sampled = {c.request.request_id: fake_token(c.request) for c in out.chunks if c.sample}
        sched.update(out, sampled, now)
        now += 1.0
        assert len(steps) < max_steps, "no progress"
    return steps


def add(sched, rid, n_prompt, n_out, arrival=0.0, priority=0):
    req = EngineRequest(
        rid, list(range(3, 3 + n_prompt)), Params(n_out), arrival_time=arrival, priority=priority
    )
    sched.add_request(req)
    return req


def test_token_budget_and_chunked_prefill():
    cfg = SchedulerConfig(max_num_batched_tokens=10, max_num_seqs=8, max_model_len=256)
    sched = Scheduler(cfg, PagedKVBackend(64, 4))
    a = add(sched, "a", 25, 3)
    b = add(sched, "b", 4, 3)
    steps = run(sched)
    assert all(s.num_tokens <= 10 for s in steps)
    first = steps[0]
    assert [(c.request.request_id, c.start, c.num_tokens, c.sample) for c in first.chunks] == [
        ("a", 0, 10, False)
    ]
    # a's prefill takes three steps (10 + 10 + 5); b is admitted in the leftover budget
    assert a.timeline.first_token_time == 2.0
    assert b.timeline.first_scheduled_time == 2.0
    assert a.output_token_ids and len(a.output_token_ids) == 3 and len(b.output_token_ids) == 3


def test_no_chunking_waits_for_room_and_rejects_too_long():
    cfg = SchedulerConfig(max_num_batched_tokens=10, enable_chunked_prefill=False)
    sched = Scheduler(cfg, PagedKVBackend(64, 4))
    long = add(sched, "long", 11, 2)
    ok = add(sched, "ok", 10, 2)
    assert long.status == RequestStatus.FINISHED_ERROR and "without chunked prefill" in long.error
    steps = run(sched)
    assert steps[0].chunks[0].num_tokens == 10 and ok.status == RequestStatus.FINISHED_LENGTH


def test_preemption_picks_the_policy_last_request_and_all_finish():
    cfg = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8)
    sched = Scheduler(cfg, PagedKVBackend(6, 4, enable_prefix_caching=False))
    old = add(sched, "old", 8, 6, arrival=0.0)
    new = add(sched, "new", 8, 6, arrival=1.0)
    run(sched)
    assert new.timeline.num_preemptions >= 1 and old.timeline.num_preemptions == 0
    assert new.timeline.recomputed_tokens > 0
    assert old.status == new.status == RequestStatus.FINISHED_LENGTH


def test_priority_policy_admits_by_priority():
    cfg = SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=1)
    sched = Scheduler(cfg, PagedKVBackend(64, 4), policy="priority")
    low = add(sched, "low", 4, 2, arrival=0.0, priority=5)
    high = add(sched, "high", 4, 2, arrival=1.0, priority=0)
    run(sched)
    assert high.timeline.finish_time < low.timeline.first_scheduled_time


def test_abort_frees_kv():
    kv = PagedKVBackend(16, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(), kv)
    add(sched, "a", 10, 50)
    sched.update(out := sched.schedule(0.0), {"a": 5}, 0.0)
    assert out.chunks and kv.num_free_blocks < 16
    assert sched.abort("a", 1.0)
    assert kv.num_free_blocks == 16 and not sched.has_unfinished()
    assert sched.requests["a"].status == RequestStatus.FINISHED_ABORTED


@settings(max_examples=40, deadline=None)
@given(
    reqs=st.lists(
        st.tuples(st.integers(1, 40), st.integers(1, 12), st.integers(0, 5)),
        min_size=1,
        max_size=12,
    ),
    budget=st.integers(1, 48),
    blocks=st.integers(6, 40),
    radix=st.booleans(),
)
def test_every_request_finishes_once_and_nothing_leaks(reqs, budget, blocks, radix):
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=6, max_model_len=128)
    kv = (
        RadixKVBackend(blocks, 4)
        if radix
        else PagedKVBackend(blocks, 4, enable_prefix_caching=True)
    )
    sched = Scheduler(cfg, kv)
    made = []
    for i, (n_prompt, n_out, arrival) in enumerate(reqs):
        made.append(add(sched, f"r{i}", n_prompt, n_out, arrival=float(arrival)))
    steps = run(sched)
    for s in steps:
        assert s.num_tokens <= budget
        assert len({c.request.request_id for c in s.chunks}) == len(s.chunks)
    for r in made:
        if r.num_prompt_tokens + r.sampling.max_tokens > blocks * 4:
            assert r.status == RequestStatus.FINISHED_ERROR and "needs KV" in r.error
            continue
        assert r.status == RequestStatus.FINISHED_LENGTH
        assert len(r.output_token_ids) == r.sampling.max_tokens
        assert len(r.timeline.token_times) == r.sampling.max_tokens
        # every token computed at least once; chunks add up to prompt + outputs - 1 + recompute
        computed = sum(c.num_tokens for s in steps for c in s.chunks if c.request is r)
        assert computed + r.num_cached_tokens >= r.num_tokens - 1
    if radix:
        kv.cache.check_integrity()
        held = kv.cache.num_tokens // 4 if hasattr(kv.cache, "num_tokens") else None
        assert kv.blocks.num_free + (held or 0) <= blocks
        kv.cache.evict(num_tokens=10**9)
        assert kv.blocks.num_free == blocks
    else:
        kv.manager.check_integrity()
        assert kv.num_free_blocks == blocks


def test_radix_backend_requires_state_slots_for_hybrid():
    with pytest.raises(ValueError, match="num_state_slots"):
        RadixKVBackend(8, 4, hybrid=True)
