"""KV accounting with speculation: the token budget counts draft tokens, rejected tokens'
slots are freed at once, and nothing leaks when requests finish."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.kv.backend import PagedKVBackend, RadixKVBackend
from core.sched.request import EngineRequest
from core.sched.scheduler import Scheduler, SchedulerConfig, SpecOutcome

from .conftest import NGRAM_K4, ScriptedDrafter, make_llm, prompts, with_drafter


@dataclass(frozen=True)
class Params:
    max_tokens: int = 20
    ignore_eos: bool = True
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0


def _sched(backend, budget=64):
    return Scheduler(SchedulerConfig(max_num_batched_tokens=budget, max_model_len=256), backend)


def _prefill(s, rid, n, params=Params()):
    req = EngineRequest(rid, list(range(10, 10 + n)), params)
    s.add_request(req)
    out = s.schedule(0.0)
    s.update(out, {rid: 7}, 0.0, spec=SpecOutcome(drafts={rid: [1, 2, 3, 4]}))
    return req


@pytest.mark.parametrize("paged", [True, False])
def test_budget_counts_drafts_and_rejections_free_slots(paged):
    backend = (
        PagedKVBackend(32, 4, enable_prefix_caching=False)
        if paged
        else RadixKVBackend(32, 4, enable_prefix_caching=False)
    )
    s = _sched(backend)
    req = _prefill(s, "a", 6)  # 6 prompt tokens + 1 sampled: 7 known, 6 computed
    assert req.spec_token_ids == [1, 2, 3, 4]
    out = s.schedule(1.0)
    (c,) = out.chunks
    assert (c.start, c.num_tokens, c.spec_token_ids) == (6, 5, (1, 2, 3, 4))
    assert c.input_token_ids == [7, 1, 2, 3, 4]
    assert len(backend.block_table(req)) == 3  # 11 positions in blocks of 4
    # two drafts accepted, the third rejected: tokens 1, 2 then the target's 9
    s.update(out, {"a": 9}, 1.0, spec=SpecOutcome(accepted={"a": [1, 2]}))
    assert req.output_token_ids == [7, 1, 2, 9]
    assert req.num_computed_tokens == 9  # KV of 7, 1, 2 kept; 9 is next step's input
    assert len(backend.block_table(req)) == 3  # ceil(9 / 4): the block of 3 and 4 is freed
    assert backend.num_free_blocks == 29
    assert req.timeline.num_draft_tokens == 4 and req.timeline.num_accepted_tokens == 2
    assert req.spec_token_ids == []  # no new drafts were proposed
    # a budget smaller than the drafts cuts them
    s2 = _sched(PagedKVBackend(32, 4, enable_prefix_caching=False), budget=3)
    r2 = EngineRequest("b", [5, 6], Params())
    s2.add_request(r2)
    s2.update(s2.schedule(0.0), {"b": 7}, 0.0, spec=SpecOutcome(drafts={"b": [1, 2, 3, 4]}))
    (c2,) = s2.schedule(1.0).chunks
    assert c2.num_tokens == 3 and c2.spec_token_ids == (1, 2)


def test_stop_inside_accepted_drafts_finishes_there_and_frees_everything():
    backend = PagedKVBackend(32, 4, enable_prefix_caching=True)
    s = _sched(backend)
    req = _prefill(s, "a", 6, Params(stop_token_ids=(2,)))
    out = s.schedule(1.0)
    done = s.update(out, {"a": 9}, 1.0, spec=SpecOutcome(accepted={"a": [1, 2, 3, 4]}))
    assert done == [req] and req.output_token_ids == [7, 1, 2]
    assert req.status.finish_reason == "stop"
    assert backend.num_free_blocks == 32
    backend.manager.check_integrity()


def test_max_tokens_caps_drafts():
    s = _sched(PagedKVBackend(32, 4, enable_prefix_caching=False))
    req = _prefill(s, "a", 6, Params(max_tokens=3))
    (c,) = s.schedule(1.0).chunks
    assert c.spec_token_ids == (1,)  # 1 output so far: one draft and the token after it
    assert req.max_tokens == 3


@pytest.mark.parametrize("arch", ["llama", "bamba"])
def test_engine_slots_match_computed_tokens_every_step(arch):
    """Through a real engine with rejections: after every step each running request holds
    exactly the blocks its computed tokens need, and at the end no block is held."""
    ps = prompts([9, 14, 6], seed=3)
    base = make_llm(arch)
    ref = [o.token_ids for o in base.generate(ps, use_tqdm=False, sampling_params=_greedy())]
    llm = make_llm(arch, speculative_config=NGRAM_K4, enable_prefix_caching=False)
    with_drafter(llm, ScriptedDrafter({tuple(p): r for p, r in zip(ps, ref, strict=True)}, 2), 4)
    eng = llm.engine
    for i, p in enumerate(ps):
        eng.add_request(f"r{i}", p, _greedy())
    kv, bs = eng.scheduler.kv, eng.scheduler.kv.block_size
    rejected = 0
    while eng.has_unfinished_requests():
        eng.step()
        for req in eng.scheduler.running:
            assert len(kv.block_table(req)) == -(-req.num_computed_tokens // bs), req.request_id
            rejected += req.timeline.num_draft_tokens - req.timeline.num_accepted_tokens
        if isinstance(kv, PagedKVBackend):
            kv.manager.check_integrity()
    assert rejected > 0
    assert kv.num_free_blocks == kv.num_blocks
    assert [eng.request(f"r{i}").output_token_ids for i in range(3)] == ref
    if isinstance(kv, RadixKVBackend):
        assert kv.states.num_free == kv.states.num_slots


def _greedy():
    from .conftest import GREEDY

    return GREEDY


@pytest.mark.parametrize("hybrid", [False, True])
def test_interception_inside_accepted_drafts_pauses_there(hybrid):
    """A tool call due after 3 output tokens, with 4 drafts accepted in the step that reaches
    it: the request pauses after exactly 3 tokens, keeps KV only for what it computed, and
    resumes with the call's tokens; a hybrid model's SSM state (ahead of the tokens) is not
    kept (the pause discards instead of preserving)."""
    from core.workload.schema import Interception

    backend = (
        RadixKVBackend(32, 4, hybrid=True, num_state_slots=8, enable_prefix_caching=False)
        if hybrid
        else PagedKVBackend(32, 4, enable_prefix_caching=False)
    )
    s = _sched(backend)
    req = EngineRequest(
        "a",
        list(range(10, 16)),
        Params(),
        interceptions=[Interception(3, 1.0, 2, returned_token_ids=(40, 41))],
    )
    s.add_request(req)
    s.update(s.schedule(0.0), {"a": 7}, 0.0, spec=SpecOutcome(drafts={"a": [1, 2, 3, 4]}))
    out = s.schedule(1.0)
    s.update(out, {"a": 9}, 1.0, spec=SpecOutcome(accepted={"a": [1, 2, 3, 4]}))
    assert req.output_token_ids == [7, 1, 2]
    assert req.status.value == "paused"
    if hybrid:
        assert req.num_computed_tokens == 0 and backend.num_free_blocks == 32
    else:
        assert req.num_computed_tokens == 8  # KV of 7 and 1 kept; 2 is the next input
        assert len(backend.block_table(req)) == 2
    s.schedule(2.5)  # the call returned: its tokens are appended and the request runs on
    assert req.token_ids[-2:] == [40, 41] and req.status.value == "running"
