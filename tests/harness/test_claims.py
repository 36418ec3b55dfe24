import math

import pandas as pd
import pytest

from core.artifact import (
    Claim,
    Expect,
    NotApplicable,
    Results,
    RunContext,
    Scale,
    at_least,
    at_most,
    between,
    close_to,
)
from core.artifact.report import evaluate_claim, gather_checklists, render_checklist, summary_line

CTX = RunContext(scale=Scale.SMOKE, seed=0, out=None)  # type: ignore[arg-type]


def results(values):
    return Results({"e": pd.DataFrame({"v": values})}, CTX)


@pytest.mark.parametrize(
    "expect,measured,ok",
    [
        (at_least(2.0), 2.0, True),
        (at_least(2.0), 1.99, False),
        (at_least(2.0, tolerance=0.1), 1.95, True),
        (at_most(1.0), 1.01, False),
        (at_most(1.0, tolerance=0.05), 1.04, True),
        (close_to(10.0, 0.5), 10.4, True),
        (close_to(10.0, 0.5), 9.4, False),
        (between(1.0, 2.0), 1.5, True),
        (between(1.0, 2.0), 2.5, False),
        (between(1.0, 2.0, tolerance=0.5), 2.5, True),
        (at_least(0.0), math.nan, False),
        (at_most(0.0), math.inf, False),
    ],
)
def test_expectations(expect, measured, ok):
    assert expect.passes(measured) is ok


def test_bad_expectations_rejected():
    with pytest.raises(ValueError):
        Expect(">", 1.0)
    with pytest.raises(ValueError):
        Expect(">=", 1.0, tolerance=-1)
    with pytest.raises(ValueError):
        Expect("in", 1.0)


def claim(measure, expect, experiments=("e",)):
    return Claim("c", "words", "1x", measure=measure, expect=expect, experiments=experiments)


def test_claim_passes_and_fails_on_measured_metrics():
    c = claim(lambda r: r["e"]["v"].mean(), at_least(2.0))
    good = evaluate_claim(c, results([2, 3]))
    bad = evaluate_claim(c, results([1, 2]))
    assert (good["passed"], good["status"], good["measured"]) == (True, "pass", 2.5)
    assert (bad["passed"], bad["status"], bad["measured"]) == (False, "FAIL", 1.5)
    assert good["expected"] == ">= 2" and good["paper_value"] == "1x"


def test_broken_measure_fails_never_passes():
    c = claim(lambda r: r["e"]["missing"].mean(), at_most(1e9))
    entry = evaluate_claim(c, results([1]))
    assert entry["passed"] is False and "KeyError" in entry["error"]


def test_nan_measure_fails():
    entry = evaluate_claim(claim(lambda r: float("nan"), at_least(-1e9)), results([1]))
    assert entry["passed"] is False and entry["measured"] is None


def test_claim_of_an_experiment_not_run_is_not_checked():
    entry = evaluate_claim(claim(lambda r: 1.0, at_least(0), ("other",)), results([1]))
    assert entry["passed"] is None and entry["status"] == "not checked"


def test_claim_the_run_cannot_measure_is_not_applicable_with_its_reason():
    def measure(r):
        raise NotApplicable("the trace has no agentic sessions")

    entry = evaluate_claim(claim(measure, at_least(0)), results([1]))
    assert (entry["status"], entry["passed"], entry["measured"]) == ("n/a", None, None)
    assert entry["reason"] == "the trace has no agentic sessions" and entry["error"] is None


def test_summary_counts_not_applicable_apart_from_passes_and_failures():
    entries = [
        evaluate_claim(claim(lambda r: 3.0, at_least(2)), results([1])),
        evaluate_claim(claim(lambda r: 1.0, at_least(2)), results([1])),
        evaluate_claim(
            claim(lambda r: (_ for _ in ()).throw(NotApplicable("x")), at_least(2)), results([1])
        ),
        evaluate_claim(claim(lambda r: 1.0, at_least(0), ("other",)), results([1])),
    ]
    assert summary_line(entries) == (
        "1 of 2 checked claims reproduced; 1 not applicable to this run; 1 not checked"
    )


def test_note_may_depend_on_the_run():
    c = Claim(
        "c",
        "w",
        "1x",
        measure=lambda r: 1.0,
        expect=at_least(0),
        experiments=("e",),
        note=lambda r: f"scale {r.ctx.scale.value}",
    )
    assert evaluate_claim(c, results([1]))["note"] == "scale smoke"


def test_checklist_shows_the_reason_of_a_claim_not_applicable():
    from core.artifact import Artifact, Experiment, Paper

    def measure(r):
        raise NotApplicable("only one workload at this scale")

    c = Claim("smallest", "w", "1x", measure=measure, expect=at_least(1), experiments=("e",))
    art = Artifact(
        "a", Paper("T", "V"), "s", [Experiment("e", "d", lambda ctx: [], lambda c: {})], [c]
    )
    entry = evaluate_claim(c, results([1]))
    run = {
        "scale": "smoke",
        "seed": 0,
        "finished_at": "now",
        "elapsed_s": 1.0,
        "points_computed": 0,
        "points_reused": 0,
    }
    page = render_checklist(art, [entry], run)
    assert "| n/a | smallest |" in page
    assert "Not applicable: only one workload at this scale." in page
    assert "0 of 0 checked claims reproduced; 1 not applicable to this run" in page


def test_gather_empty_results(tmp_path):
    assert "No artifact has results yet" in gather_checklists(tmp_path)
