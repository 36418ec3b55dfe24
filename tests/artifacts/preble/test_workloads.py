"""Preble's five workloads: the paper's table statistics, their prefix structure, Zipf tool
popularity, length scaling, arrivals, determinism and the shared-fraction metric."""

from functools import lru_cache
from itertools import pairwise

import numpy as np
import pytest

from artifacts.preble.workloads import (
    PREBLE_WORKLOADS,
    PrebleVideoQAParams,
    generate_preble_videoqa,
    generate_preble_workload,
    preble_workload_stats,
    shared_fraction,
)
from core.workload import Request, Workload, load_loogle, session_stats, zipf_weights
from tests.workload.helpers import common_prefix_len

NAMES = ("toolbench", "embodied", "programming", "videoqa", "loogle")
N = 500  # "a few hundred requests": the size the table checks and the docstrings report


@lru_cache(maxsize=32)
def make(name: str, n: int = N, seed: int = 0, scale: float = 1.0, **kw) -> Workload:
    return generate_preble_workload(name, n, 2.0, seed=seed, length_scale=scale, **kw)


@lru_cache(maxsize=16)
def stats(name: str, n: int = N, seed: int = 0, scale: float = 1.0) -> dict:
    return preble_workload_stats(make(name, n, seed, scale))


def _by_group(w: Workload) -> dict[str, list[Request]]:
    out: dict[str, list[Request]] = {}
    for r in w:
        out.setdefault(r.metadata["group"], []).append(r)
    return out


def test_registry_names_the_five_workloads():
    assert tuple(PREBLE_WORKLOADS) == NAMES
    for name, spec in PREBLE_WORKLOADS.items():
        assert spec.name == name and 0 < spec.shared_fraction < 1 and spec.prompt_mean > 0


# --------------------------------------------------------------------------- table statistics


@pytest.mark.parametrize("name", NAMES)
def test_statistics_match_the_paper_table(name):
    spec, s = PREBLE_WORKLOADS[name], stats(name)
    assert s["requests"] == N
    # Mean within 15% and shared fraction within 0.07 of the paper. Measured (seed 0): ToolBench
    # 1849 / 0.81 (the shipped calls' conversation suffixes cap sharing near 0.83), embodied
    # 2268 / 0.958 (generated tokens are not counted as cached), programming 3933 / 0.967,
    # VideoQA 9877 / 0.889, LooGLE 24038 / 0.905 (real documents, not rescaled).
    assert s["prompt_mean"] == pytest.approx(spec.prompt_mean, rel=0.15)
    assert s["shared_fraction"] == pytest.approx(spec.shared_fraction, abs=0.07)
    # The spread is looser: ten real tool prompts and nine real documents vary less than the
    # authors' data (ToolBench 673 vs 742, LooGLE 5168 vs 6105).
    assert s["prompt_std"] == pytest.approx(spec.prompt_std, rel=0.3)
    assert s["output_mean"] >= 1
    assert s["prompt_mean"] == s["prompt_len_mean"]  # built on session_stats


def test_output_lengths_follow_the_authors():
    assert {r.output_len for r in make("embodied")} == {26}  # 26 tokens per turn
    prog = [r.output_len for r in make("programming")]
    assert max(prog) <= 512 and np.mean(prog) > 100  # decode-heavy, cut at the authors' 512
    assert max(r.output_len for r in make("loogle")) <= 45  # the authors' LooGLE cap
    assert np.mean([r.output_len for r in make("videoqa")]) < 10  # short answers


# --------------------------------------------------------------------------- structure


def test_toolbench_tool_popularity_is_zipf():
    w = make("toolbench")
    counts = np.bincount([r.metadata["tool"] for r in w])
    assert len(counts) >= 2 and counts.argmax() == 0  # tool 0 is the most popular
    expected = zipf_weights(len(counts), 1.1)
    assert counts[0] / N == pytest.approx(expected[0], abs=0.06)
    assert counts[:3].sum() > counts[3:6].sum()
    assert all(r.metadata["tool_rank"] == r.metadata["tool"] + 1 for r in w)


def test_toolbench_requests_share_their_tool_prompt_and_only_the_preamble_across_tools():
    groups = _by_group(make("toolbench"))
    for reqs in groups.values():
        n = reqs[0].metadata["shared_prefix_tokens"]
        for other in reqs[1:]:  # the tool prompt (+ variant marker), then the nonce
            assert common_prefix_len(reqs[0].prompt_token_ids, other.prompt_token_ids) == n
    a, b = groups["tool-0"][0], groups["tool-1"][0]
    across = common_prefix_len(a.prompt_token_ids, b.prompt_token_ids)
    shortest = min(g[0].metadata["shared_prefix_tokens"] for g in groups.values())
    assert 0 < across < shortest  # different tools share the generic system preamble only


def test_embodied_turns_extend_the_previous_prompt_and_output():
    w = make("embodied")
    sessions = w.sessions()
    assert 10 <= len(sessions) <= 30
    for turns in sessions.values():
        groups = {r.metadata["group"] for r in turns}
        assert len(groups) == 1
        for prev, cur in pairwise(turns):
            before = prev.prompt_token_ids + prev.output_token_ids
            assert cur.prompt_token_ids[: len(before)] == before
            assert cur.turn == prev.turn + 1 and cur.arrival_time >= prev.arrival_time
            assert cur.think_time_s == pytest.approx(cur.arrival_time - prev.arrival_time)
    # Environments share nothing with each other.
    firsts = [turns[0].prompt_token_ids for turns in sessions.values()]
    assert max(common_prefix_len(a, b) for a, b in pairwise(firsts)) <= 1
    assert session_stats(w)["prefix_reuse"] > 0.9


@pytest.mark.parametrize("name", ["programming", "videoqa", "loogle"])
def test_requests_of_a_group_share_exactly_its_prefix(name):
    groups = _by_group(make(name))
    assert sum(len(g) >= 2 for g in groups.values()) >= 5
    for reqs in groups.values():
        n = reqs[0].metadata["shared_prefix_tokens"]
        assert n < reqs[0].prompt_len
        for other in reqs[1:]:  # the group's prefix, then each request's own nonce
            assert common_prefix_len(reqs[0].prompt_token_ids, other.prompt_token_ids) == n


def test_programming_shares_one_2400_token_prefix_across_problems():
    heads = [g[0] for g in _by_group(make("programming")).values()]
    for a, b in pairwise(heads):
        assert common_prefix_len(a.prompt_token_ids, b.prompt_token_ids) == 2400


def test_videoqa_videos_are_their_id_token_repeated_256_per_second():
    groups = _by_group(make("videoqa"))
    heads = [g[0] for g in groups.values()]
    system = common_prefix_len(heads[0].prompt_token_ids, heads[1].prompt_token_ids)
    ids = set()
    for r in heads:
        n_video = r.metadata["video_tokens"]
        assert n_video == int(r.metadata["frames"] / 30 * 256)
        assert r.metadata["shared_prefix_tokens"] == system + n_video
        video = r.prompt_token_ids[system : system + n_video]
        assert video == [video[0]] * n_video
        ids.add(video[0])
    assert len(ids) == len(groups)  # every video has its own id token
    # Questions go to videos in proportion to their length: longer videos get more.
    lens = np.array([g[0].metadata["video_tokens"] for g in groups.values()])
    count = np.array([len(g) for g in groups.values()])
    assert np.corrcoef(lens, count)[0, 1] > 0.3


def test_videoqa_needs_a_distinct_id_token_per_video():
    with pytest.raises(ValueError, match="distinct video id tokens"):
        generate_preble_videoqa(PrebleVideoQAParams(num_requests=300, vocab_size=20))


def test_loogle_uses_the_shipped_documents_and_their_questions():
    w = make("loogle")
    real = load_loogle(task="both")
    docs = {r.session_id: r.prompt_token_ids[: r.metadata["document_tokens"]] for r in real}
    assert {r.metadata["document"] for r in w} == set(docs)
    for r in w:
        end, n = r.metadata["shared_prefix_tokens"], r.metadata["document_tokens"]
        # instruction (+ copy marker), then the real document cut to fit a 32K context
        assert r.prompt_token_ids[end - n : end] == docs[r.metadata["document"]][:n]
        assert r.prompt_len + r.output_len <= 32768
    copies = {r.metadata["copy"] for r in w}
    assert copies == set(range(max(copies) + 1)) and max(copies) >= 1


# --------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("name", NAMES)
def test_length_scale_shrinks_lengths_and_keeps_the_sharing(name):
    full, small = make(name, 200), make(name, 200, scale=0.1)
    # Same structure: every request keeps its prefix group.
    assert [r.metadata["group"] for r in full] == [r.metadata["group"] for r in small]
    p_full, p_small = stats(name, 200), stats(name, 200, scale=0.1)
    assert p_small["prompt_mean"] == pytest.approx(0.1 * p_full["prompt_mean"], rel=0.2)
    assert p_small["output_mean"] < p_full["output_mean"] or p_full["output_mean"] < 10
    assert p_small["shared_fraction"] == pytest.approx(p_full["shared_fraction"], abs=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_tokens_and_token_ids_fit_the_vocabulary(name):
    a = generate_preble_workload(name, 60, 3.0, seed=7, length_scale=0.05, vocab_size=300)
    b = generate_preble_workload(name, 60, 3.0, seed=7, length_scale=0.05, vocab_size=300)
    c = generate_preble_workload(name, 60, 3.0, seed=8, length_scale=0.05, vocab_size=300)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert [(r.arrival_time, r.output_len) for r in a] == [
        (r.arrival_time, r.output_len) for r in b
    ]
    assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c]
    ids = np.concatenate([r.prompt_token_ids for r in a])
    assert ids.min() >= 4 and ids.max() < 300


@pytest.mark.parametrize("name", NAMES)
def test_arrivals_are_sorted_at_the_rate_and_leave_tokens_alone(name):
    poisson = make(name, 300, scale=0.05)
    azure = make(name, 300, scale=0.05, arrivals="azure")
    for w in (poisson, azure):
        t = np.array([r.arrival_time for r in w])
        assert np.all(np.diff(t) >= 0)
    assert (len(poisson) - 1) / poisson.duration == pytest.approx(2.0, rel=0.15)
    assert (len(azure) - 1) / azure.duration == pytest.approx(2.0, rel=1e-9)
    assert azure.params["arrivals"] == "azure" and any("Azure" in s for s in azure.sources)
    assert {r.request_id: r.prompt_token_ids for r in poisson} == {
        r.request_id: r.prompt_token_ids for r in azure
    }


def test_unknown_workloads_and_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"unknown Preble workload 'sharegpt'.*toolbench"):
        generate_preble_workload("sharegpt", 10, 1.0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['zipf'\].*zipf_s"):
        generate_preble_workload("toolbench", 10, 1.0, zipf=1.2)
    with pytest.raises(ValueError, match="length_scale"):
        generate_preble_workload("embodied", 10, 1.0, length_scale=0)
    with pytest.raises(ValueError, match="arrivals"):
        generate_preble_workload("videoqa", 10, 1.0, arrivals="gamma")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        generate_preble_workload("loogle", 10, 0.0)


# --------------------------------------------------------------------------- shared_fraction


def _workload(prompts: list[list[int]]) -> Workload:
    return Workload(
        "t",
        [Request(f"r{i}", float(i), len(p), 1, prompt_token_ids=p) for i, p in enumerate(prompts)],
    )


def test_shared_fraction_counts_the_longest_earlier_prefix():
    # hits: 0, 2 ([1, 2]), 0, 3 ([1, 2, 3]), 4 (itself again) over 3 + 3 + 1 + 4 + 4 tokens
    w = _workload([[1, 2, 3], [1, 2, 4], [5], [1, 2, 3, 4], [1, 2, 3, 4]])
    assert shared_fraction(w) == pytest.approx(9 / 15)
    assert shared_fraction(_workload([])) == 0.0
    # Order matters: the longer prompt first makes the shorter one a full hit.
    assert shared_fraction(_workload([[1, 2, 3], [1, 2]])) == pytest.approx(2 / 5)
    assert shared_fraction(_workload([[1, 2], [1, 2, 3]])) == pytest.approx(2 / 5)
    assert shared_fraction(_workload([[1, 2], [1, 3], [1, 2, 9]])) == pytest.approx(3 / 7)


def test_shared_fraction_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 3, size=rng.integers(1, 8)).tolist() for _ in range(60)]
    hit = sum(
        max((common_prefix_len(p, q) for q in prompts[:i]), default=0)
        for i, p in enumerate(prompts)
    )
    total = sum(len(p) for p in prompts)
    assert shared_fraction(_workload(prompts)) == pytest.approx(hit / total)


def test_shared_fraction_needs_token_ids():
    w = Workload("t", [Request("x", 0.0, 5, 1)])
    with pytest.raises(ValueError, match="'x' has no prompt_token_ids"):
        shared_fraction(w)
