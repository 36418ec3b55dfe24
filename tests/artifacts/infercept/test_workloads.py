"""InferCept's augmentation workloads: profile statistics, interception placement, scaling,
the mixed workload, the authors' synthetic sweep, ToolBench-based requests and bad input."""

import math
from functools import lru_cache

import numpy as np
import pytest

from artifacts.infercept.workloads import (
    AUGMENTATIONS,
    AUTHORS_DURATIONS,
    SYNTHETIC_PROFILES,
    generate_infercept_workload,
    infercept_workload_stats,
    toolbench_interceptions,
)
from core.workload import Interception, Request, Workload, load_toolbench

N = 300  # "a few hundred requests"
KINDS = tuple(AUGMENTATIONS)


@lru_cache(maxsize=32)
def make(kind: str, n: int = N, seed: int = 0, ls: float = 1.0, ds: float = 1.0) -> Workload:
    return generate_infercept_workload(kind, n, 2.0, seed=seed, length_scale=ls, duration_scale=ds)


def assert_mean(values, expected: float, what: str, slack: float = 0.02) -> None:
    """The sample mean is within 4 standard errors (plus ``slack`` relative) of ``expected``."""
    x = np.asarray(values, dtype=float)
    tol = 4 * x.std() / math.sqrt(len(x)) + slack * abs(expected)
    assert abs(x.mean() - expected) <= tol, (what, x.mean(), expected, tol)


def gaps(r: Request) -> list[int]:
    points = [0] + [i.after_output_tokens for i in r.interceptions]
    return [b - a for a, b in zip(points, points[1:], strict=False)]


def test_same_arguments_give_the_same_workload_and_seeds_differ():
    a = generate_infercept_workload("mixed", 50, 1.0, seed=3)
    b = generate_infercept_workload("mixed", 50, 1.0, seed=3)
    assert a.requests == b.requests and a.params == b.params
    c = generate_infercept_workload("mixed", 50, 1.0, seed=4)
    assert [r.interceptions for r in a] != [r.interceptions for r in c]


@pytest.mark.parametrize("kind", KINDS)
def test_per_kind_statistics_match_the_profile(kind):
    p = AUGMENTATIONS[kind]
    w = make(kind)
    s = infercept_workload_stats(w)[kind]
    icps = [i for r in w for i in r.interceptions]
    assert s["requests"] == N and s["interceptions"] == len(icps)
    assert all(i.kind == kind for i in icps)
    assert all(r.metadata["augmentation"] == kind for r in w)
    assert min(len(r.interceptions) for r in w) >= 1
    assert_mean([len(r.interceptions) for r in w], p.num_interceptions, "calls")
    assert_mean([g for r in w for g in gaps(r)], p.tokens_between, "between")
    assert_mean([i.duration_s for i in icps], p.mean_duration_s, "duration")
    assert_mean([i.returned_tokens for i in icps], p.returned_tokens, "returned")
    assert_mean([r.prompt_len for r in w], p.prompt_len, "prompt")
    assert_mean([r.output_len for r in w], p.mean_output_len, "output")
    # The stats function reports the same means.
    assert s["interceptions_per_request"] == pytest.approx(
        np.mean([len(r.interceptions) for r in w])
    )
    assert s["duration_mean_s"] == pytest.approx(np.mean([i.duration_s for i in icps]))
    assert s["returned_tokens_mean"] == pytest.approx(np.mean([i.returned_tokens for i in icps]))
    assert s["tokens_between_mean"] == pytest.approx(np.mean([g for r in w for g in gaps(r)]))
    assert w.params["mean_duration_s"] == {kind: pytest.approx(p.mean_duration_s)}


def test_short_and_long_kinds_are_ordered_as_the_authors_describe():
    # Calculator < 1 s; TTS and image generation about 20x longer; 3 to 28 calls per request.
    mean = {k: p.mean_duration_s for k, p in AUGMENTATIONS.items()}
    assert max(mean["arithmetic"], mean["qa"], mean["virtual_env"]) < 1.0
    assert min(mean["chatbot"], mean["image"], mean["tts"]) > 10 * mean["qa"]
    calls = [p.num_interceptions for p in AUGMENTATIONS.values()]
    assert 2.5 <= min(calls) and max(calls) <= 28.5
    for p in AUGMENTATIONS.values():
        assert set(p.sources) == {
            "num_interceptions",
            "tokens_between",
            "duration",
            "returned_tokens",
            "prompt_len",
        }


def test_interceptions_are_ordered_inside_the_output_with_real_token_ids():
    w = make("mixed", 400)
    assert np.all(np.diff([r.arrival_time for r in w]) >= 0)
    assert_mean(np.diff([0.0] + [r.arrival_time for r in w]), 1 / 2.0, "arrival gap")
    for r in w:
        after = [i.after_output_tokens for i in r.interceptions]
        assert after == sorted(set(after)) and 0 < after[0] and after[-1] < r.output_len
        assert r.prompt_token_ids is not None and len(r.prompt_token_ids) == r.prompt_len
        assert min(r.prompt_token_ids) >= 4 and max(r.prompt_token_ids) < 32000
        assert {i.kind for i in r.interceptions} == {r.metadata["augmentation"]}
        assert r.metadata["num_interceptions"] == len(r.interceptions)
        for i in r.interceptions:
            assert (
                i.returned_token_ids is not None and len(i.returned_token_ids) == i.returned_tokens
            )
            assert i.returned_tokens >= 1 and i.duration_s >= 0 and math.isfinite(i.duration_s)


def test_mixed_draws_every_kind_uniformly_or_by_the_given_weights():
    w = make("mixed", 600)
    counts = {k: sum(r.metadata["augmentation"] == k for r in w) for k in KINDS}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 expected each
    s = infercept_workload_stats(w)
    assert set(s) == {*KINDS, "all"} and s["all"]["requests"] == 600
    assert set(w.params["mean_duration_s"]) == set(KINDS)
    m = generate_infercept_workload("mixed", 400, 1.0, mix={"qa": 1, "chatbot": 3})
    kinds = [r.metadata["augmentation"] for r in m]
    assert set(kinds) == {"qa", "chatbot"} and 0.65 < kinds.count("chatbot") / 400 < 0.85


def test_length_and_duration_scales_shrink_the_same_draws():
    base, small = make("virtual_env", 60), make("virtual_env", 60, ls=0.25, ds=0.1)
    for a, b in zip(base, small, strict=True):
        assert len(a.interceptions) == len(b.interceptions)
        assert b.prompt_len == max(1, round(a.prompt_len * 0.25))
        assert gaps(b) == [max(1, round(g * 0.25)) for g in gaps(a)]
        tail_a = a.output_len - a.interceptions[-1].after_output_tokens
        assert b.output_len - b.interceptions[-1].after_output_tokens == max(
            1, round(tail_a * 0.25)
        )
        for x, y in zip(a.interceptions, b.interceptions, strict=True):
            assert y.returned_tokens == max(1, round(x.returned_tokens * 0.25))
            assert y.duration_s == pytest.approx(x.duration_s * 0.1)
    assert small.params["mean_duration_s"]["virtual_env"] == pytest.approx(0.009)
    zero = generate_infercept_workload("tts", 5, 1.0, duration_scale=0.0)
    assert all(i.duration_s == 0 for r in zero for i in r.interceptions)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"length_scale": 0}, "length_scale"),
        ({"duration_scale": -1}, "duration_scale"),
        ({"duration_scale": math.inf}, "duration_scale"),
        ({"rate": 0}, "rate"),
        ({"mix": {"qa": 1}}, "mix"),
    ],
)
def test_bad_parameters_are_rejected_by_name(kwargs, needle):
    args = {"kind": "qa", "num_requests": 3, "rate": 1.0} | kwargs
    with pytest.raises(ValueError, match=needle):
        generate_infercept_workload(**args)


def test_unknown_kind_is_rejected_naming_it_and_the_choices():
    with pytest.raises(ValueError, match=r"'calculator'.*arithmetic.*tts.*'mixed'"):
        generate_infercept_workload("calculator", 3, 1.0)
    with pytest.raises(ValueError, match="'nope'"):
        generate_infercept_workload("mixed", 3, 1.0, mix={"nope": 1.0})
    with pytest.raises(ValueError, match="'nope'"):
        toolbench_interceptions(duration="nope")


def test_duration_means_are_exact():
    rng = np.random.default_rng(0)
    expected = {"normal": 11.0, "uniform": 10.05, "short": 2.0, "long": 18.0, "bimodal": 10.0}
    for name, dist in AUTHORS_DURATIONS.items():
        assert dist.mean == pytest.approx(expected[name], abs=0.02)
        x = dist.sample(rng, 400_000)
        assert np.all(x >= 0)
        assert_mean(x, dist.mean, name, slack=0.0)


def test_synthetic_profiles_follow_the_authors_script():
    assert set(SYNTHETIC_PROFILES) == {f"synthetic-{s}" for s in AUTHORS_DURATIONS}
    w = generate_infercept_workload("synthetic-long", 20, 1.0)
    for r in w:
        assert r.prompt_len == 1024 and r.output_len == 1024
        assert [i.after_output_tokens for i in r.interceptions] == list(range(16, 257, 16))
        assert {i.returned_tokens for i in r.interceptions} == {48}
        assert len({i.duration_s for i in r.interceptions}) == 1  # one draw per request
    assert len({r.interceptions[0].duration_s for r in w}) == 20  # a new draw per request


@lru_cache(maxsize=1)
def toolbench_turns() -> dict[str, list[Request]]:
    return load_toolbench().sessions()


def test_toolbench_requests_keep_the_real_calls_and_returned_tokens():
    w = toolbench_interceptions(rate=2.0, duration="uniform")
    turns = toolbench_turns()
    assert len(w) == len(turns) == 13
    for r in w:
        session = turns[r.metadata["trajectory"]]
        assert r.prompt_token_ids == session[0].prompt_token_ids
        assert len(r.interceptions) == len(session) - 1
        assert r.metadata["functions"] == [t.metadata["function"] for t in session[:-1]]
        generated = 0
        for icp, prev, nxt in zip(r.interceptions, session, session[1:], strict=False):
            generated += prev.output_len
            assert icp.kind == "toolbench" and icp.after_output_tokens == generated
            # The tokens appended at resume: the function's result and its role headers.
            assert icp.returned_tokens == nxt.metadata["appended_tokens"]
            assert icp.returned_tokens > nxt.metadata["returned_tokens"] >= 0
            base = prev.prompt_len + prev.output_len
            assert list(icp.returned_token_ids) == nxt.prompt_token_ids[base:]
            assert 0.1 <= icp.duration_s <= 20
        assert r.output_len == generated + session[-1].output_len
    assert w.params["mean_duration_s"] == {"toolbench": pytest.approx(10.05)}
    assert any("G1_answer" in s for s in w.sources)


def test_toolbench_draws_with_replacement_scales_and_follows_the_chosen_duration():
    w = toolbench_interceptions(300, 1.0, seed=1, duration="short")
    trajectories = {r.metadata["trajectory"] for r in w}
    assert len(w) == 300 and len(trajectories) == 13 and len({r.request_id for r in w}) == 300
    assert_mean([i.duration_s for r in w for i in r.interceptions], 2.0, "short")
    full = toolbench_interceptions()
    small = toolbench_interceptions(length_scale=0.5, duration_scale=0.0)
    for ref, r in zip(full, small, strict=True):
        assert r.metadata == ref.metadata
        assert r.prompt_token_ids == ref.prompt_token_ids[: max(1, round(ref.prompt_len * 0.5))]
        for a, b in zip(ref.interceptions, r.interceptions, strict=True):
            assert (
                b.returned_token_ids
                == a.returned_token_ids[: max(1, round(a.returned_tokens * 0.5))]
            )
            assert b.duration_s == 0
        assert r.output_token_ids is not None and len(r.output_token_ids) == r.output_len


def test_stats_on_a_hand_built_workload():
    reqs = [
        Request(
            "a",
            0.0,
            10,
            30,
            interceptions=[
                Interception(5, 1.0, 4, "x"),
                Interception(20, 3.0, 6, "x"),
            ],
            metadata={"augmentation": "x"},
        ),
        Request("b", 1.0, 2, 8, interceptions=[Interception(8, 2.0, 1, "y")]),
        Request("c", 2.0, 3, 4),
    ]
    s = infercept_workload_stats(Workload("t", reqs))
    assert list(s) == ["none", "x", "y", "all"]
    assert s["x"]["interceptions_per_request"] == 2 and s["x"]["tokens_between_mean"] == 10
    assert s["x"]["duration_mean_s"] == 2.0 and s["x"]["returned_tokens_mean"] == 5
    assert s["x"]["context_at_interception_mean"] == ((10 + 5) + (10 + 20 + 4)) / 2
    assert s["y"]["requests"] == 1 and s["y"]["context_at_interception_mean"] == 10
    assert s["none"]["interceptions"] == 0 and s["none"]["duration_mean_s"] == 0.0
    assert s["all"]["requests"] == 3 and s["all"]["interceptions"] == 3
