from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from core.workload import (
    AgenticParams,
    ChatSessionParams,
    SharedPrefixParams,
    generate_agentic_sessions,
    generate_chat_sessions,
    generate_shared_prefix,
    lognormal_lengths,
    sessions_to_interceptions,
    zipf_weights,
)
from tests.workload.helpers import common_prefix_len

TINY_TREE = dict(fanout=(4, 4, 4), segment_lens=(3, 2, 2), suffix_len_mean=2.0, output_len_mean=4.0)


def zipf_slope(counts: list[int], min_count: int = 50) -> float:
    """Slope of log(frequency) vs log(rank) over the ranks seen at least ``min_count`` times."""
    freq = np.array(sorted(counts, reverse=True), dtype=float)
    freq = freq[freq >= min_count]
    ranks = np.arange(1, len(freq) + 1)
    return float(np.polyfit(np.log(ranks), np.log(freq), 1)[0])


def test_same_seed_same_workload_other_seed_other_workload():
    small = [
        (generate_shared_prefix, SharedPrefixParams(num_requests=50, **TINY_TREE)),
        (generate_chat_sessions, ChatSessionParams(num_sessions=10)),
        (
            generate_agentic_sessions,
            AgenticParams(
                num_sessions=2, steps_mean=5, tool_prompt_len=32, observation_len_mean=40
            ),
        ),
    ]
    for gen, params in small:
        a, b, c = gen(params, seed=11), gen(params, seed=11), gen(params, seed=12)
        assert a == b, gen.__name__
        assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c], gen.__name__
        assert all(
            r.prompt_token_ids is not None and len(r.prompt_token_ids) == r.prompt_len for r in a
        )
        assert a.params["seed"] == 11


def test_lognormal_lengths_mean_and_cv():
    rng = np.random.default_rng(0)
    x = lognormal_lengths(rng, 200.0, 0.8, 100_000)
    # Standard error of the mean is 0.25%; of the CV about 1%.
    assert x.mean() == pytest.approx(200.0, rel=0.02)
    assert x.std() / x.mean() == pytest.approx(0.8, rel=0.05)
    assert x.min() >= 1 and x.dtype.kind == "i"
    assert set(lognormal_lengths(rng, 7.0, 0.0, 5)) == {7}


@pytest.mark.parametrize("s", [0.8, 1.2])
def test_shared_prefix_leaf_popularity_is_zipf(s):
    w = generate_shared_prefix(
        SharedPrefixParams(num_requests=20_000, zipf_s=s, **TINY_TREE), seed=5
    )
    counts = Counter(r.metadata["leaf"] for r in w)
    # Fitting the empirical rank-frequency curve: within 0.1 of -s.
    assert zipf_slope(list(counts.values())) == pytest.approx(-s, abs=0.1)
    # The most popular leaf is the one ranked first, and ranks are spread over the tree.
    top = counts.most_common(1)[0][0]
    assert {r.metadata["leaf_rank"] for r in w if r.metadata["leaf"] == top} == {1}
    assert w.params["zipf_s"] == s


def test_shared_prefix_children_popularity():
    params = SharedPrefixParams(num_requests=20_000, zipf_s=1.0, popularity="children", **TINY_TREE)
    w = generate_shared_prefix(params, seed=1)
    for level in range(3):
        freq = np.bincount([r.metadata["path"][level] for r in w], minlength=4) / len(w)
        assert np.allclose(freq, zipf_weights(4, 1.0), atol=0.015)


def test_shared_prefix_structure_and_lengths():
    params = SharedPrefixParams(
        num_requests=3000,
        fanout=(2, 3),
        segment_lens=(40, 60),
        suffix_len_mean=30.0,
        output_len_mean=50.0,
        arrival_rate=20.0,
    )
    w = generate_shared_prefix(params, seed=3)
    by_leaf: dict[int, list] = {}
    for r in w:
        by_leaf.setdefault(r.metadata["leaf"], []).append(r)
        assert r.metadata["prefix_len"] == 100
    assert len(by_leaf) == 6
    for reqs in by_leaf.values():
        head = reqs[0].prompt_token_ids[:100]
        assert all(r.prompt_token_ids[:100] == head for r in reqs)
    # Siblings share their parent's segment only; different roots share (almost) nothing.
    leaf = {tuple(rs[0].metadata["path"]): rs[0].prompt_token_ids for rs in by_leaf.values()}
    assert 40 <= common_prefix_len(leaf[(0, 0)], leaf[(0, 1)]) < 45
    assert common_prefix_len(leaf[(0, 0)], leaf[(1, 0)]) < 5
    # Unique suffixes: no two requests have the same prompt.
    assert len({tuple(r.prompt_token_ids) for r in w}) == len(w)
    suffix = np.array([r.prompt_len - 100 for r in w])
    assert suffix.mean() == pytest.approx(30.0, rel=0.05)
    assert np.mean([r.output_len for r in w]) == pytest.approx(50.0, rel=0.05)
    assert (len(w) - 1) / w.duration == pytest.approx(20.0, rel=0.1)


def test_chat_sessions_history_and_statistics():
    params = ChatSessionParams(
        num_sessions=1500,
        turns_mean=3.0,
        system_prompt_len=12,
        input_len_mean=20.0,
        output_len_mean=30.0,
        think_time_mean_s=6.0,
        session_rate=2.0,
    )
    w = generate_chat_sessions(params, seed=9)
    sessions = w.sessions()
    system = w[0].prompt_token_ids[:12]
    thinks, inputs = [], []
    for turns in sessions.values():
        assert [r.turn for r in turns] == list(range(len(turns)))
        assert turns[0].think_time_s == 0.0
        assert turns[0].prompt_token_ids[:12] == system
        for prev, nxt in zip(turns, turns[1:], strict=False):
            history = prev.prompt_token_ids + prev.output_token_ids
            assert nxt.prompt_token_ids[: len(history)] == history
            assert nxt.prompt_len == len(history) + nxt.metadata["user_tokens"]
            assert nxt.arrival_time == pytest.approx(prev.arrival_time + nxt.think_time_s)
            thinks.append(nxt.think_time_s)
        inputs += [r.metadata["user_tokens"] for r in turns]
    # 1,500 sessions: SE of mean turns ~1.6%, of think time ~1.5%, of lengths < 3%.
    assert len(w) / len(sessions) == pytest.approx(3.0, rel=0.08)
    assert np.mean(thinks) == pytest.approx(6.0, rel=0.08)
    assert np.mean(inputs) == pytest.approx(20.0, rel=0.08)
    assert np.mean([r.output_len for r in w]) == pytest.approx(30.0, rel=0.08)
    starts = sorted(t[0].arrival_time for t in sessions.values())
    assert (len(starts) - 1) / (starts[-1] - starts[0]) == pytest.approx(2.0, rel=0.1)


def test_chat_sessions_respect_max_prompt_len():
    params = ChatSessionParams(
        num_sessions=50, turns_mean=8.0, input_len_mean=200.0, max_prompt_len=1000
    )
    w = generate_chat_sessions(params, seed=4)
    assert all(r.prompt_len <= 1000 for r in w)
    assert max(r.prompt_len for r in w) > 600


def test_agentic_sessions_grow_to_tens_of_thousands_of_tokens():
    w = generate_agentic_sessions(AgenticParams(), seed=0)  # full default size
    longest = max(r.prompt_len for r in w)
    assert 20_000 < longest < 200_000
    for turns in w.sessions().values():
        tool_prompt = turns[0].prompt_token_ids[:2048]
        for prev, nxt in zip(turns, turns[1:], strict=False):
            history = prev.prompt_token_ids + prev.output_token_ids
            assert nxt.prompt_token_ids[: len(history)] == history
            assert nxt.prompt_token_ids[:2048] == tool_prompt
            assert nxt.prompt_len == len(history) + nxt.metadata["returned_tokens"]
            assert nxt.metadata["returned_tool"] == prev.metadata["tool"]
        assert turns[-1].metadata["tool"] is None
    # Actions are short, observations long.
    assert np.mean([r.output_len for r in w]) == pytest.approx(48.0, rel=0.2)
    observations = [r.metadata["returned_tokens"] for r in w if r.turn > 0]
    assert np.mean(observations) == pytest.approx(1200.0, rel=0.2)


def test_agentic_statistics_tool_popularity_and_interceptions():
    params = AgenticParams(
        num_sessions=300,
        steps_mean=6.0,
        tool_prompt_len=16,
        task_len_mean=8.0,
        action_len_mean=6.0,
        observation_len_mean=10.0,
        tool_duration_mean_s=3.0,
        num_tools=6,
        tool_zipf_s=1.0,
    )
    w = generate_agentic_sessions(params, seed=2)
    assert len(w) / len(w.sessions()) == pytest.approx(6.0, rel=0.08)
    tools = Counter(r.metadata["tool"] for r in w if r.metadata["tool"])
    freq = np.array([tools[f"tool-{i}"] for i in range(6)]) / sum(tools.values())
    assert np.allclose(freq, zipf_weights(6, 1.0), atol=0.03)
    durations = [r.think_time_s for r in w if r.turn > 0]
    assert np.mean(durations) == pytest.approx(3.0, rel=0.08)

    folded = generate_agentic_sessions(replace(params, interceptions=True), seed=2)
    by_hand = sessions_to_interceptions(w, kind=lambda r: r.metadata["returned_tool"] or "tool")
    assert folded.requests == by_hand.requests
    assert len(folded) == len(w.sessions())
    for r in folded:
        turns = w.sessions()[r.request_id]
        assert len(r.interceptions) == len(turns) - 1
        assert [i.kind for i in r.interceptions] == [t.metadata["returned_tool"] for t in turns[1:]]
        assert [i.returned_tokens for i in r.interceptions] == [
            t.metadata["returned_tokens"] for t in turns[1:]
        ]
        assert all(len(i.returned_token_ids) == i.returned_tokens for i in r.interceptions)
        ats = [i.after_output_tokens for i in r.interceptions]
        assert ats == list(np.cumsum([t.output_len for t in turns[:-1]]))
        assert r.output_token_ids == [x for t in turns for x in t.output_token_ids]


def test_agentic_max_context_len():
    params = AgenticParams(
        num_sessions=5, steps_mean=30, observation_len_mean=500.0, max_context_len=8000
    )
    w = generate_agentic_sessions(params, seed=1)
    assert all(r.prompt_len + r.output_len <= 8000 for r in w)
    assert max(r.prompt_len for r in w) > 5000


def test_folding_rejects_sessions_that_are_not_append_only():
    w = generate_chat_sessions(ChatSessionParams(num_sessions=3, turns_mean=3.0), seed=0)
    sessions = [t for t in w.sessions().values() if len(t) > 1]
    victim = sessions[0][1]
    victim.prompt_token_ids[0] += 1  # still the right length, no longer a prefix
    with pytest.raises(ValueError, match="not append-only"):
        sessions_to_interceptions(w)
