"""Closed-loop session serving: turns wait for the previous turn and carry its generated tokens."""

from __future__ import annotations

import pytest

from core.engine import LLM, serve_sessions
from core.workload import ChatSessionParams, Request, generate_chat_sessions


def _virtual(llm):
    clock = [0.0]
    eng = llm.engine
    eng.clock = lambda: clock[0]
    inner = eng.step

    def step():
        clock[0] += 0.01  # every step takes 10 ms of virtual time
        return inner()

    eng.step = step

    def sleep(dt):
        clock[0] += dt

    return eng, sleep


def _workload():
    params = ChatSessionParams(
        num_sessions=3,
        turns_mean=3,
        max_turns=3,
        input_len_mean=12,
        output_len_mean=6,
        think_time_mean_s=0.5,
        session_rate=2.0,
        system_prompt_len=8,
        max_prompt_len=200,
        vocab_size=512,
    )
    return generate_chat_sessions(params, seed=1)


def test_turns_follow_their_session_and_reuse_generated_tokens(llama_dir):
    llm = LLM(llama_dir, block_size=4, num_kv_blocks=256, max_num_seqs=4, max_model_len=256)
    eng, sleep = _virtual(llm)
    wl = _workload()
    out = serve_sessions(eng, wl.requests, sleep=sleep, think_time_scale=2.0)
    assert sorted(r.request_id for r in out) == sorted(r.request_id for r in wl.requests)
    by_id = {r.request_id: r for r in out}
    by_session: dict[str, list[Request]] = {}
    for r in wl.requests:
        by_session.setdefault(r.session_id, []).append(r)
    later_turns = 0
    for turns in by_session.values():
        turns.sort(key=lambda r: r.turn)
        for prev, cur in zip(turns[:-1], turns[1:], strict=True):
            p, c = by_id[prev.request_id], by_id[cur.request_id]
            # the next turn starts from what the engine generated, not the reference response
            assert c.prompt_token_ids[: len(p.token_ids)] == p.token_ids
            new_user = cur.prompt_len - prev.prompt_len - prev.output_len
            assert len(c.prompt_token_ids) == len(p.token_ids) + new_user
            assert c.prompt_token_ids[len(p.token_ids) :] == cur.prompt_token_ids[-new_user:]
            # it arrives after the previous turn finished plus the scaled think time
            assert c.timeline.arrival_time == pytest.approx(
                p.timeline.finish_time + 2.0 * cur.think_time_s
            )
            # and the prefix cache serves the previous turn's tokens (block-aligned)
            assert c.num_cached_tokens >= (len(p.token_ids) - 1) // 4 * 4 - 4
            later_turns += 1
    assert later_turns >= 2


def test_prompt_that_does_not_extend_the_previous_turn_is_served_as_given(llama_dir):
    llm = LLM(llama_dir, block_size=4, num_kv_blocks=128, max_num_seqs=4, max_model_len=256)
    eng, sleep = _virtual(llm)
    a = Request(
        "a",
        0.0,
        5,
        3,
        prompt_token_ids=[5, 6, 7, 8, 9],
        session_id="s",
        turn=0,
        output_token_ids=[10, 11, 12],
    )
    b = Request("b", 0.0, 4, 2, prompt_token_ids=[5, 6, 40, 41], session_id="s", turn=1)
    out = {r.request_id: r for r in serve_sessions(eng, [b, a], sleep=sleep)}
    assert out["b"].prompt_token_ids == [5, 6, 40, 41]
    assert out["b"].timeline.arrival_time >= out["a"].timeline.finish_time


def test_failed_turn_ends_its_session_and_bad_input_is_named(llama_dir):
    llm = LLM(llama_dir, block_size=4, num_kv_blocks=128, max_num_seqs=4, max_model_len=16)
    eng, sleep = _virtual(llm)
    long = Request(
        "long",
        0.0,
        20,
        2,
        prompt_token_ids=list(range(3, 23)),
        session_id="s",
        output_token_ids=[1, 2],
    )
    nxt = Request(
        "next", 0.0, 23, 2, prompt_token_ids=list(range(3, 23)) + [1, 2, 9], session_id="s", turn=1
    )
    out = serve_sessions(eng, [long, nxt], sleep=sleep)
    assert [r.request_id for r in out] == ["long"] and out[0].error
    with pytest.raises(ValueError, match="'x' has no prompt_token_ids"):
        serve_sessions(eng, [Request("x", 0.0, 3, 1)], sleep=sleep)
    with pytest.raises(ValueError, match="think_time_scale"):
        serve_sessions(eng, [], think_time_scale=-1)


def test_replay_resumes_a_request_paused_alone(llama_dir):
    """With only a paused request left, replay steps once its call returned (it used to spin)."""
    from core.engine import replay
    from core.workload import Interception

    eng, sleep = _virtual(LLM(model=str(llama_dir), num_kv_blocks=64))
    req = Request(
        "r0",
        0.0,
        prompt_len=6,
        output_len=5,
        prompt_token_ids=[1, 2, 3, 4, 5, 6],
        interceptions=[Interception(after_output_tokens=2, duration_s=0.3, returned_tokens=3)],
    )
    [done] = replay(eng, [req], sleep=sleep)
    assert done.is_finished and done.num_output_tokens == 5
    assert done.timeline.finish_time >= 0.3
