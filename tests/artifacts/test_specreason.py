"""The SpecReason artifact: the accept/reject control flow with fake models and a fake judge, the
judges, the one-prefill step scorer against a teacher-forced forward (random models), pricing at
paper scale, the summaries the claims read, and the smoke scale end to end (trained zoo models
only: skipped without them)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import pytest
import torch

from artifacts.specreason import artifact as sr
from artifacts.specreason import paper_scale, summary
from artifacts.specreason.judges import LikelihoodJudge, OracleJudge, likelihood_score
from artifacts.specreason.reason import Event, Generation, solve, spec_reason
from core.artifact import NotApplicable, Results, RunContext, Scale
from core.zoo.tasks import arith_example

NL, EOS = 10, 1


class FakeModel:
    """Writes scripted steps: step i of the completion is ``[base + i, NL]``, the last one
    ``[base + 99, EOS]``; the step index is the number of blank lines in the history."""

    def __init__(self, name: str, base: int, steps: int, repeat_from: int | None = None) -> None:
        self.name, self.base, self.steps, self.repeat_from = name, base, steps, repeat_from
        self.calls: list[int] = []

    def step_at(self, i: int) -> list[int]:
        if self.repeat_from is not None and i >= self.repeat_from:
            i = self.repeat_from
        return [self.base + 99, EOS] if i >= self.steps else [self.base + i, NL]

    def write(self, ids: Sequence[int], max_tokens: int, *, step: bool) -> Generation:
        i = sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b == NL)
        self.calls.append(i)
        if step:
            out = self.step_at(i)
        else:
            out = [t for k in range(self.steps + 1) for t in self.step_at(k) + [NL]][:-1]
            out = [t for t in out if t != NL or True]
        ev = [Event(self.name, "prefill", len(ids), 0), Event(self.name, "decode", len(out), 0)]
        return Generation(out, ev, out[-1] == EOS)


class FakeJudge:
    name = "fake"

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores
        self.seen: list[tuple[int, list[int]]] = []

    def score(self, history, step, position):
        self.seen.append((position, list(step)))
        return self.scores.get(position, 9.0), [Event("large", "prefill", len(step), len(history))]


def test_accepts_at_or_above_tau_and_the_large_model_rewrites_the_rest():
    small, large = FakeModel("small", 100, 3), FakeModel("large", 200, 3)
    judge = FakeJudge({0: 9.0, 1: 4.0, 2: 5.0, 3: 9.0})
    sol = spec_reason([5, 6], small, large, judge, 5.0, newline=NL, max_steps=10)
    assert [s.accepted for s in sol.steps] == [True, False, True, True]
    assert [s.score for s in sol.steps] == [9.0, 4.0, 5.0, 9.0]  # 5.0 >= tau is kept
    # step 1 came from the large model; each kept step gets its blank line
    assert sol.token_ids == [100, NL, NL, 201, NL, NL, 102, NL, NL, 199, EOS]
    assert sol.finished
    assert large.calls == [1]  # the large model wrote only the rejected step
    # the judge saw each proposal after the history as it was then
    assert judge.seen[2] == (2, [102, NL])
    kinds = [(e.model, e.kind) for e in sol.events]
    assert kinds.count(("large", "decode")) == 1 and kinds.count(("small", "decode")) == 4


@pytest.mark.parametrize(("tau", "writer"), [(0.0, 100), (9.5, 200)])
def test_tau_extremes_give_the_one_model_runs(tau, writer):
    small, large = FakeModel("small", 100, 2), FakeModel("large", 200, 2)
    sol = spec_reason([5], small, large, FakeJudge({}), tau, newline=NL, max_steps=10)
    assert sol.token_ids == [writer, NL, NL, writer + 1, NL, NL, writer + 99, EOS]
    assert all(s.accepted == (writer == 100) for s in sol.steps)


def test_stops_on_a_repeated_step_and_on_the_step_budget():
    small = FakeModel("small", 100, 9, repeat_from=1)
    sol = spec_reason(
        [5], small, FakeModel("l", 200, 9), FakeJudge({}), 1.0, newline=NL, max_steps=10
    )
    assert sol.token_ids == [100, NL, NL, 101, NL, NL] and not sol.finished
    sol = spec_reason([5], FakeModel("s", 100, 9), FakeModel("l", 200, 9), FakeJudge({}), 1.0, newline=NL, max_steps=3)  # fmt: skip
    assert len(sol.steps) == 3 and not sol.finished


def test_solve_is_one_request():
    m = FakeModel("large", 200, 1)
    sol = solve(m, [5], 64)
    assert sol.finished and sol.steps == [] and m.calls == [0]


def test_likelihood_score_maps_to_0_9():
    assert likelihood_score([0.0, 0.0]) == 9.0
    assert likelihood_score([math.log(0.5)] * 3) == pytest.approx(4.5)
    assert likelihood_score([]) == 0.0


def test_oracle_judge_checks_steps_and_the_answer():
    import random

    e = arith_example(random.Random(3), 2)
    steps = e.completion.split("\n\n")
    judge = OracleJudge(e, lambda ids: "".join(map(chr, ids)))

    def enc(s: str) -> list[int]:
        return [ord(c) for c in s]

    assert judge.score([], enc(steps[0] + "\n"), 0)[0] == 9.0
    assert judge.score([], enc(steps[1] + "\n"), 0)[0] == 0.0  # right step, wrong position
    wrong = steps[0].rsplit("=", 1)[0] + "= 0"
    assert judge.score([], enc(wrong), 0)[0] == 0.0
    answer = steps[2].replace("<|end|>", "")
    assert judge.right(enc(answer), 2) and not judge.right(enc(answer), 1)
    assert not judge.right(enc("Answer: 1000"), 2)


def _teacher_forced(llm, ids: list[int]) -> list[float]:
    from core.model.training import dense_forward, dense_logits

    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(dense_logits(llm.model, dense_forward(llm.model, x)).float(), -1)
    return [float(logp[0, p - 1, ids[p]]) for p in range(1, len(ids))]


@pytest.mark.parametrize("spec", [None, {"method": "ngram", "num_speculative_tokens": 3}])
def test_step_scorer_matches_a_teacher_forced_forward_with_and_without_cache_hits(spec):
    from artifacts.specreason.engines import StepScorer
    from core.engine import LLM
    from tests.model.conftest import hf_config

    llm = LLM(
        hf_config("llama"),
        seed=0,
        num_kv_blocks=64,
        block_size=4,
        speculative_config=spec,
        linear_backend="torch",  # the teacher-forced reference needs it
    )
    scorer = StepScorer(llm)
    g = torch.Generator().manual_seed(1)
    history = torch.randint(3, 500, (21,), generator=g).tolist()
    step = torch.randint(3, 500, (6,), generator=g).tolist()
    ref = _teacher_forced(llm, history + step)[len(history) - 1 :]
    got, cached = scorer.logprobs(history, step)
    assert cached == 0 and got == pytest.approx(ref, abs=1e-4)
    # the same history again: its blocks come from the prefix cache, the step is still scored
    step2 = torch.randint(3, 500, (5,), generator=g).tolist()
    ref2 = _teacher_forced(llm, history + step2)[len(history) - 1 :]
    got2, cached2 = scorer.logprobs(history, step2)
    assert cached2 == 20  # five full 4-token blocks of the 21-token history
    assert got2 == pytest.approx(ref2, abs=1e-4)
    # a history that ends on a block boundary: the hit covers the step's first predictor row,
    # so the first token is not scored and the rest are
    got3, cached3 = scorer.logprobs(history[:20], step2)
    ref3 = _teacher_forced(llm, history[:20] + step2)[20:]
    assert cached3 == 20 and got3 == pytest.approx(ref3, abs=1e-4)
    # other requests in the engine are not scored and the scorer keeps nothing around
    assert not scorer._wanted and not scorer._got
    # judging a step already cached (by the first call) scores only the recomputed positions
    judge = LikelihoodJudge(scorer)
    score, events = judge.score(history, step, 0)
    assert score == pytest.approx(likelihood_score(ref[-2:]), abs=1e-3)
    assert events == [Event("large", "prefill", len(history) + len(step) - 24, 24)]


def test_engine_model_stops_at_the_step_token_and_reports_cache_hits():
    from artifacts.specreason.engines import EngineModel
    from core.engine import LLM
    from tests.model.conftest import hf_config

    llm = LLM(hf_config("llama"), seed=0, num_kv_blocks=64, block_size=4)
    ids = list(range(3, 20))
    free = EngineModel("large", llm, newline_id=10**6).write(ids, 12, step=False)
    assert len(free.token_ids) == 12 and not free.finished
    stop = free.token_ids[4]
    first = free.token_ids.index(stop)
    m = EngineModel("large", llm, newline_id=stop)
    g = m.write(ids, 12, step=True)
    assert g.token_ids == free.token_ids[: first + 1]
    assert g.events[0] == Event("large", "prefill", len(ids) - 16, 16)  # the first run's blocks
    assert g.events[1] == Event("large", "decode", first, len(ids))


def test_pricing_orders_the_work():
    costs = paper_scale.cost_models("a100-80g")
    big = paper_scale.event_seconds(Event("large", "decode", 50, 400), costs)
    little = paper_scale.event_seconds(Event("small", "decode", 50, 400), costs)
    judge = paper_scale.event_seconds(Event("large", "prefill", 50, 400), costs)
    # decoding on QwQ-32B is memory-bound: a 50-token prefill costs about one decode step
    assert big > 8 * little and judge < big / 10
    verify = paper_scale.event_seconds(Event("large", "verify", 10, 400, drafts=4), costs)
    assert 10 * big / 50 < verify < 10 * (big / 50 + 5 * little / 50)
    evs = [Event("small", "decode", 50, 400), Event("large", "prefill", 50, 400)]
    assert paper_scale.priced_seconds(evs, "a100-80g") == pytest.approx(little + judge)
    with pytest.raises(ValueError, match="unknown event kind"):
        paper_scale.event_seconds(Event("large", "teleport", 1, 0), costs)


def _frame() -> pd.DataFrame:
    rows = []

    def add(method, tau, correct, a100, acc="", right="", scores=""):
        rows.append(
            {
                "method": method, "judge": "likelihood" if "+" in method or method == "specreason" else "",
                "tau": tau, "difficulty": 2, "problem": len(rows), "correct": correct,
                "a100-80g_s": a100, "h100-sxm_s": a100 / 2, "cpu_seconds": a100 / 100,
                "steps": len(acc), "accepted_steps": acc.count("a"), "accepted_by_position": acc,
                "right_by_position": right, "scores": scores,
            }
        )  # fmt: skip

    add("large", float("nan"), True, 10.0)
    add("small", float("nan"), False, 1.0)
    add("spec-decode", float("nan"), True, 5.0)
    add("specreason-oracle", 9.0, True, 2.0, "ara", "yny", "9,0,9")
    add("specreason", 6.0, False, 2.0, "aaa", "yny", "8.9,7.5,8.8")
    add("specreason", 8.0, True, 4.0, "ara", "yny", "8.9,7.5,8.8")
    add("specreason", 8.5, True, 5.0, "arr", "yny", "8.9,7.5,8.4")
    add("specreason+spec", 8.0, True, 3.0, "ara", "yny", "8.9,7.5,8.8")
    return pd.DataFrame(rows)


def test_claim_measures_on_a_hand_made_frame():
    r = Results({"real": _frame()}, RunContext(Scale.SMOKE, 0, "."))
    # tau=6 is faster but loses accuracy: the speedup at equal accuracy is tau=8's
    assert sr.best_speedup(sr.A100)(r) == pytest.approx(2.5)
    assert sr.combined_reduction(r) == pytest.approx(0.25)
    assert sr.tau_moves_latency(r) == pytest.approx(1.0)
    assert sr.accuracy_gain(r) == 0.0 and sr.oracle_gain(r) == 0.0
    assert sr.judge_auc(r) == pytest.approx(1.0)  # right steps scored 8.8-8.9, wrong 7.5
    assert sr.best_speedup(sr.CPU)(r) == pytest.approx(2.5)
    pos = summary.acceptance_by_position(_frame()).set_index(["run", "position"])["acceptance"]
    assert pos[("specreason tau=8.5", 2)] == 0.0 and pos[("specreason tau=6", 1)] == 1.0
    assert "specreason tau=8: accuracy 100%" in sr.table_note(r)
    no_wrong = _frame().assign(right_by_position="yyy")
    with pytest.raises(NotApplicable, match="both right and wrong"):
        sr.judge_auc(Results({"real": no_wrong}, r.ctx))


def test_missing_models_are_named(monkeypatch, tmp_path):
    from artifacts.specreason import engines, real

    monkeypatch.setenv(engines.SMALL_ENV, str(tmp_path / "nope"))
    assert "nope" in engines.missing_models()
    with pytest.raises(FileNotFoundError, match="no trained zoo model"):
        real.points(RunContext(Scale.SMOKE, 0, tmp_path))


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    from artifacts.specreason.engines import missing_models
    from core.artifact import RunOptions, run_artifact

    why = missing_models()
    if why:
        pytest.skip(f"needs the trained zoo models: {why}")
    s = run_artifact(
        sr.ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=1, progress=False)
    )
    for f in ("claims.json", "CHECKLIST.md", "metrics.csv", "provenance.json"):
        assert (tmp_path / f).is_file(), f
    for fig in ("accuracy-latency", "speedup-tau", "acceptance-position", "difficulty"):
        assert (tmp_path / f"fig-{fig}.png").is_file(), fig
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert set(m["method"]) == set(sr.real.METHODS)
    # the large model alone always costs more at paper scale than the small one alone
    assert m[m.method == "large"]["a100-80g_s"].mean() > m[m.method == "small"]["a100-80g_s"].mean()
    assert s.claims
