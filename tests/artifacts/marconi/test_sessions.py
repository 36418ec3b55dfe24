"""Marconi's session workloads: the generators' statistics, the prefix structure of their turns
and observation collapsing."""

from itertools import pairwise

import numpy as np
import pytest

from artifacts.marconi.sessions import (
    LMSYS_LIKE,
    SHAREGPT_LIKE,
    ChatTraceParams,
    SWEAgentTraceParams,
    generate_swe_agent_trace,
    lmsys_like,
    sharegpt_like,
    swebench_like,
)
from core.workload import Workload, session_stats
from tests.workload.helpers import common_prefix_len

NO_CAP = 10**9

# Small SWE-like sessions: the same structure at a tenth of the tokens, so tests stay fast.
SMALL_AGENT = dict(
    system_prompt_len=40,
    task_len_mean=30.0,
    action_len_mean=8.0,
    observation_len_mean=25.0,
)


def by_session(w: Workload) -> list[list]:
    return list(w.sessions().values())


# --------------------------------------------------------------------------- chat


@pytest.mark.parametrize(
    ("make", "preset"), [(lmsys_like, LMSYS_LIKE), (sharegpt_like, SHAREGPT_LIKE)]
)
def test_chat_statistics_match_their_targets(make, preset):
    w = make(num_sessions=400, seed=3, max_context_len=NO_CAP)
    turns = np.array([len(s) for s in by_session(w)])
    # Every session keeps >= 10 turns without the cap (authors: conversations with >= 10 turns).
    assert turns.min() >= 10 and turns.max() <= preset.turns_max
    # Geometric tail: SD of the mean over 400 sessions is ~2%.
    assert turns.mean() == pytest.approx(preset.turns_mean, rel=0.08)
    user = np.array([r.metadata["user_tokens"] for r in w])
    out = np.array([r.output_len for r in w])
    # Heavy-tailed lognormals (CV 2): ~3% standard error over ~5k turns.
    assert user.mean() == pytest.approx(preset.input_len_mean, rel=0.15)
    assert out.mean() == pytest.approx(preset.output_len_mean, rel=0.1)
    # The typing gap is the new message's words at 90 words per minute, exactly.
    for r in w:
        assert r.metadata["words"] == round(r.metadata["user_tokens"] * 0.75)
        expected = r.metadata["words"] / 1.5 if r.turn else 0.0
        assert r.think_time_s == pytest.approx(expected)


def test_chat_turn_is_previous_turn_plus_response_plus_new_message():
    w = lmsys_like(num_sessions=20, seed=1)
    for turns in by_session(w):
        assert [r.turn for r in turns] == list(range(len(turns)))
        assert turns[0].think_time_s == 0.0
        assert turns[0].prompt_len == turns[0].metadata["user_tokens"]  # no system prompt
        for prev, cur in pairwise(turns):
            history = prev.prompt_token_ids + prev.output_token_ids
            assert cur.prompt_token_ids[: len(history)] == history
            assert cur.prompt_len == len(history) + cur.metadata["user_tokens"]
            assert cur.arrival_time == pytest.approx(prev.arrival_time + cur.think_time_s)
    assert session_stats(w)["prefix_reuse"] > 0.9


def test_chat_system_prompt_is_shared_by_every_session():
    w = sharegpt_like(num_sessions=5, seed=2, system_prompt_len=32)
    firsts = [s[0].prompt_token_ids for s in by_session(w)]
    assert all(f[:32] == firsts[0][:32] for f in firsts)
    assert len({tuple(f[32:33]) for f in firsts}) > 1


@pytest.mark.parametrize(("make", "counts_output"), [(lmsys_like, True), (sharegpt_like, False)])
def test_chat_sessions_end_at_the_context_cap(make, counts_output):
    cap = 3000
    capped = make(num_sessions=60, seed=4, max_context_len=cap)
    full = make(num_sessions=60, seed=4, max_context_len=NO_CAP)
    ended_early = 0
    for short, long in zip(by_session(capped), by_session(full), strict=True):
        # The capped session is the uncapped one cut before its first turn past the cap.
        assert [r.prompt_token_ids for r in short] == [
            r.prompt_token_ids for r in long[: len(short)]
        ]
        for r in short:
            assert r.prompt_len + (r.output_len if counts_output else 0) <= cap
        if len(short) < len(long):
            ended_early += 1
            nxt = long[len(short)]
            assert nxt.prompt_len + (nxt.output_len if counts_output else 0) > cap
    assert ended_early > 10


def test_uniform_session_starts_like_the_authors():
    w = lmsys_like(num_sessions=8, session_rate=0.25, session_arrivals="uniform")
    assert [s[0].arrival_time for s in by_session(w)] == [4.0 * i for i in range(8)]


def test_bad_parameters_name_the_value():
    with pytest.raises(ValueError, match="turns_mean=5"):
        ChatTraceParams(turns_mean=5)
    with pytest.raises(ValueError, match="session_arrivals"):
        ChatTraceParams(session_arrivals="burst")
    with pytest.raises(ValueError, match="keep_last_observations"):
        SWEAgentTraceParams(keep_last_observations=-1)
    with pytest.raises(ValueError, match="session_rate"):
        swebench_like(session_rate=0)


# --------------------------------------------------------------------------- agent


def test_swebench_defaults_turns_cap_and_growth():
    w = swebench_like(num_sessions=30, seed=5)
    turns = np.array([len(s) for s in by_session(w)])
    assert turns.max() <= 50 and turns.mean() > 20
    assert max(r.prompt_len for r in w) <= 32768
    stats = session_stats(w)
    assert stats["prompt_len_mean"] > 8000  # long contexts, well above the chat workloads
    # Collapsing breaks the prefix every turn past the 6th: only about half is reusable.
    assert 0.3 < stats["prefix_reuse"] < 0.8
    everyone = [s[0].prompt_token_ids[:1536] for s in by_session(w)]
    assert all(x == everyone[0] for x in everyone)  # the shared system prompt


@pytest.mark.parametrize("mean_gap", [5.0, 7.5, 10.0])
def test_swebench_gaps_are_poisson_integers(mean_gap):
    w = swebench_like(
        num_sessions=200,
        seed=6,
        response_time_mean_s=mean_gap,
        max_context_len=NO_CAP,
        **SMALL_AGENT,
    )
    gaps = np.array([r.think_time_s for s in by_session(w) for r in s[1:]])
    assert len(gaps) > 4000 and np.all(gaps == np.round(gaps))
    assert gaps.mean() == pytest.approx(mean_gap, rel=0.03)
    assert gaps.var() == pytest.approx(mean_gap, rel=0.1)  # Poisson: variance = mean
    for s in by_session(w):
        for prev, cur in pairwise(s):
            assert cur.arrival_time == prev.arrival_time + cur.think_time_s


@pytest.mark.parametrize("placeholder", [0, 3])
def test_swebench_collapses_observations_older_than_the_last_five(placeholder):
    kw = dict(num_sessions=6, max_context_len=NO_CAP, turns_mean=30.0, **SMALL_AGENT)
    full = generate_swe_agent_trace(SWEAgentTraceParams(keep_last_observations=None, **kw), 7)
    kept = generate_swe_agent_trace(
        SWEAgentTraceParams(keep_last_observations=5, collapsed_observation_len=placeholder, **kw),
        7,
    )
    placeholders = set()
    for f_turns, k_turns in zip(by_session(full), by_session(kept), strict=True):
        assert len(f_turns) == len(k_turns) >= 10
        # Without collapsing, each step extends the previous prompt + action exactly; that
        # gives every observation of the session.
        obs = [f_turns[0].prompt_token_ids]
        for prev, cur in pairwise(f_turns):
            history = prev.prompt_token_ids + prev.output_token_ids
            assert cur.prompt_token_ids[: len(history)] == history
            obs.append(cur.prompt_token_ids[len(history) :])
        acts = [r.output_token_ids for r in f_turns]
        # The placeholder sits right after turn 0 in the first prompt that collapses one.
        at = len(obs[0]) + len(acts[0])
        ph = k_turns[7].prompt_token_ids[at : at + placeholder]
        placeholders.add(tuple(ph))
        for k, r in enumerate(k_turns):
            assert r.output_token_ids == acts[k]
            expected: list[int] = []
            for i in range(k):
                expected += (ph if 1 <= i <= k - 6 else obs[i]) + acts[i]
            assert r.prompt_token_ids == expected + obs[k], k
            assert r.metadata["collapsed_observations"] == max(0, k - 6)
        # Turns 1..6 extend the previous turn; from turn 7 on the shared prefix stops where
        # observation k-6 was.
        for k, (prev, cur) in enumerate(pairwise(k_turns), start=1):
            history = prev.prompt_token_ids + prev.output_token_ids
            shared = common_prefix_len(history, cur.prompt_token_ids)
            if k <= 6:
                assert shared == len(history)
            else:
                stop = len(obs[0]) + sum(len(a) for a in acts[: k - 6]) + placeholder * (k - 7)
                assert shared == stop, k
    assert len(placeholders) == 1 and len(next(iter(placeholders))) == placeholder


def test_same_seed_same_workload_and_sessions_do_not_depend_on_their_number():
    for make in (lmsys_like, sharegpt_like, swebench_like):
        kw = SMALL_AGENT if make is swebench_like else {}
        a, b = make(num_sessions=6, seed=9, **kw), make(num_sessions=6, seed=9, **kw)
        assert a == b
        c = make(num_sessions=6, seed=10, **kw)
        assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c]
        big = make(num_sessions=12, seed=9, **kw)
        small_sessions = a.sessions()
        for sid, turns in small_sessions.items():
            assert [r.prompt_token_ids for r in big.sessions()[sid]] == [
                r.prompt_token_ids for r in turns
            ]
        assert a.params["seed"] == 9
