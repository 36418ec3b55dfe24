"""The harness end to end on the toy artifact: outputs, resume, failures, provenance, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.artifact import RunOptions, Scale, SweepFailed, main, run_artifact
from core.artifact.report import gather_checklists

from .toy_artifact import TOY


@pytest.fixture
def calls(tmp_path, monkeypatch):
    d = tmp_path / "calls"
    d.mkdir()
    monkeypatch.setenv("TOY_CALLS", str(d))
    return lambda: len(list(d.iterdir()))


def opts(out, **kw):
    return RunOptions(scale=Scale.SMOKE, out=out, jobs=1, progress=False, **kw)


def test_run_writes_every_output(tmp_path, calls):
    out = tmp_path / "toy"
    s = run_artifact(TOY, opts(out))
    for name in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-squares.png",
        "fig-squares.pdf",
    ):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:2]) == ["experiment", "seed"]
    assert len(metrics[metrics.experiment == "squares"]) == 3
    assert len(metrics[metrics.experiment == "cubes"]) == 6  # 2 points x 3 rows
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    assert claims["max-square"]["passed"] is True and claims["max-square"]["measured"] == 4
    assert claims["small-cube"]["passed"] is False and claims["small-cube"]["measured"] == 16
    for c in claims.values():
        assert {"id", "claim", "expected", "measured", "passed"} <= set(c)
    text = (out / "CHECKLIST.md").read_text()
    assert "2 of 3 checked claims reproduced" in text and "| FAIL | small-cube |" in text
    assert calls() == 5 and s.outcome.computed == 5 and s.outcome.reused == 0


def test_resume_recomputes_nothing_then_only_what_is_missing(tmp_path, calls):
    out = tmp_path / "toy"
    run_artifact(TOY, opts(out))
    assert calls() == 5
    again = run_artifact(TOY, opts(out))
    assert calls() == 5 and again.outcome.computed == 0 and again.outcome.reused == 5
    victim = sorted((out / "points").glob("*.json"))[0]
    victim.unlink()
    third = run_artifact(TOY, opts(out))
    assert calls() == 6 and third.outcome.computed == 1
    # a larger scale reuses the points it shares with the smaller one
    default = run_artifact(TOY, RunOptions(scale=Scale.DEFAULT, out=out, jobs=1, progress=False))
    assert default.outcome.computed == 2 and calls() == 8
    fresh = run_artifact(TOY, opts(out, fresh=True))
    assert fresh.outcome.computed == 5 and calls() == 13


def test_interrupted_sweep_keeps_finished_points_and_resumes(tmp_path, calls, monkeypatch):
    out = tmp_path / "toy"
    monkeypatch.setenv("TOY_FAIL_X", "1")
    with pytest.raises(SweepFailed, match="1 of 5 points failed.*planned failure at x=1"):
        run_artifact(TOY, opts(out))
    assert calls() == 5
    assert len(list((out / "points").glob("*.json"))) == 4
    assert not (out / "claims.json").exists()
    monkeypatch.delenv("TOY_FAIL_X")
    s = run_artifact(TOY, opts(out))
    assert s.outcome.computed == 1 and s.outcome.reused == 4 and calls() == 6


def test_process_pool_runs_points_in_other_processes(tmp_path, calls):
    out = tmp_path / "toy"
    s = run_artifact(TOY, RunOptions(scale=Scale.SMOKE, out=out, jobs=2, progress=False))
    assert s.outcome.computed == 5 and calls() == 5
    hosts = {json.loads(p.read_text())["host"] for p in (out / "points").glob("*.json")}
    assert len(hosts) == 1
    serial = run_artifact(TOY, opts(tmp_path / "serial"))
    cols = ["experiment", "x", "y", "noise"]
    a = pd.read_csv(out / "metrics.csv").sort_values(cols[:2], na_position="first")[cols]
    b = pd.read_csv(serial.out / "metrics.csv").sort_values(cols[:2], na_position="first")[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_same_seed_same_outputs_other_seed_differs(tmp_path):
    a = run_artifact(TOY, opts(tmp_path / "a", seed=7))
    b = run_artifact(TOY, opts(tmp_path / "b", seed=7))
    c = run_artifact(TOY, opts(tmp_path / "c", seed=8))
    assert (a.out / "metrics.csv").read_text() == (b.out / "metrics.csv").read_text()
    assert (a.out / "claims.json").read_text() == (b.out / "claims.json").read_text()
    assert (a.out / "metrics.csv").read_text() != (c.out / "metrics.csv").read_text()


def test_provenance_is_complete(tmp_path):
    trace = tmp_path / "t.txt"
    trace.write_text("a\nb\nc\n")
    s = run_artifact(TOY, opts(tmp_path / "toy", trace=trace, seed=3))
    prov = json.loads((s.out / "provenance.json").read_text())
    for key in (
        "git",
        "config",
        "config_hash",
        "seeds",
        "packages",
        "host",
        "data_files",
        "points",
        "scale",
        "started_at",
        "finished_at",
    ):
        assert key in prov, key
    assert set(prov["git"]) == {"commit", "branch", "dirty"}
    assert prov["seeds"] == [3] and prov["config"]["seed"] == 3
    assert prov["packages"]["numpy"] and prov["packages"]["pandas"]
    assert prov["host"]["cpu_count"] >= 1 and prov["host"]["python"]
    import hashlib

    digest = hashlib.sha256(trace.read_bytes()).hexdigest()
    assert prov["data_files"] == {str(trace.resolve()): digest}
    assert pd.read_csv(s.out / "metrics.csv")["trace_lines"].dropna().eq(3).all()


def test_changed_trace_content_invalidates_points(tmp_path, calls):
    trace = tmp_path / "t.txt"
    trace.write_text("a\n")
    run_artifact(TOY, opts(tmp_path / "toy", trace=trace, experiments=("squares",)))
    trace.write_text("a\nb\n")
    s = run_artifact(TOY, opts(tmp_path / "toy", trace=trace, experiments=("squares",)))
    assert s.outcome.computed == 3 and calls() == 6


def test_filtered_run_leaves_claims_not_checked(tmp_path):
    s = run_artifact(TOY, opts(tmp_path / "toy", experiments=("cubes",)))
    status = {c["id"]: c["status"] for c in s.claims}
    assert status == {
        "max-square": "not checked",
        "small-cube": "FAIL",
        "mean-noise": "not checked",
    }


def test_gathered_checklist_names_every_artifact(tmp_path):
    run_artifact(TOY, opts(tmp_path / "toy"))
    page = gather_checklists(tmp_path)
    assert "[toy](#toy)" in page and "2 of 3 checked claims reproduced" in page


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--scale", "huge"], "invalid choice: 'huge'"),
        (["--jobs", "two"], "invalid int value: 'two'"),
    ],
)
def test_bad_option_fails_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(TOY, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--trace", "/no/such/file.txt"], "--trace /no/such/file.txt: no such file"),
        (["--experiments", "nope"], "unknown experiment 'nope'"),
        (["--jobs", "-1"], "--jobs must be a positive number of workers, or 0 for all cores"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(argv, message, capsys, tmp_path):
    out = tmp_path / "toy"
    assert main(TOY, [*argv, "--scale", "smoke", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_trace_that_is_a_directory_says_so(capsys, tmp_path):
    out = tmp_path / "toy"
    assert main(TOY, ["--trace", str(tmp_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--trace {tmp_path}: is a directory" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_jobs_zero_means_every_usable_core(tmp_path):
    from core.artifact.runner import resolve_jobs

    assert resolve_jobs(0) == resolve_jobs(None) == len(os.sched_getaffinity(0))
    assert resolve_jobs(3) == 3
    s = run_artifact(TOY, RunOptions(scale=Scale.SMOKE, out=tmp_path / "t", jobs=0, progress=False))
    assert json.loads((s.out / "provenance.json").read_text())["executor"]["jobs"] == resolve_jobs(
        0
    )


def test_provenance_and_checklist_give_the_command_that_reproduces_the_run(tmp_path):
    trace = tmp_path / "t.txt"
    trace.write_text("a\n")
    out = tmp_path / "toy"
    assert (
        main(
            TOY,
            [
                "--scale",
                "smoke",
                "--seed",
                "4",
                "--trace",
                str(trace),
                "--out",
                str(out),
                "--experiments",
                "squares",
                "--jobs",
                "1",
                "--quiet",
            ],
        )
        == 0
    )
    prov = json.loads((out / "provenance.json").read_text())
    expected = (
        f"nox -s artifact-toy -- --scale smoke --seed 4 --trace {trace} "
        f"--experiments squares --out {out}"
    )
    assert prov["command"] == expected
    assert prov["invocation"] and prov["invocation"] != ["__main__.py"]
    assert expected in (out / "CHECKLIST.md").read_text()


def test_trace_check_names_the_file(capsys, tmp_path):
    bad = tmp_path / "trace.csv"
    bad.write_text("x")
    assert main(TOY, ["--trace", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{bad}: toy traces must be .txt files" in capsys.readouterr().err


def test_cli_run_and_strict_exit(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(TOY, ["--scale", "smoke", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 checked claims reproduced" in printed and "[FAIL] small-cube" in printed
    assert main(TOY, ["--scale", "smoke", "--out", str(out), "--quiet", "--strict"]) == 1


def test_help_documents_every_option():
    code = "from core.artifact import main; from tests.harness.toy_artifact import TOY; main(TOY)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, cwd=root, check=True
    ).stdout
    for opt in (
        "--scale",
        "--seed",
        "--out",
        "--trace",
        "--jobs",
        "--executor",
        "--ray-address",
        "--experiments",
        "--fresh",
        "--no-plots",
        "--strict",
    ):
        assert opt in out, opt
    assert "squares: y = x^2 over x" in out


def test_exclusive_points_run_alone_after_the_others_in_this_process(tmp_path):
    import os

    from core.artifact.sweep import LocalPoolExecutor, Point, PointStore, run_sweep

    from .toy_artifact import where

    points = [Point("shared", {"i": i}, f"s{i}", where) for i in range(4)]
    points += [Point("alone", {"i": i}, f"a{i}", where, exclusive=True) for i in range(2)]
    pool = LocalPoolExecutor(2)
    try:
        outcome = run_sweep(points, PointStore(tmp_path / "points"), pool)
    finally:
        pool.close()
    rows = {r.hash: r.rows[0] for r in outcome.results}
    assert {rows[f"a{i}"]["pid"] for i in range(2)} == {os.getpid()}
    assert all(rows[f"s{i}"]["pid"] != os.getpid() for i in range(4))
    assert min(rows[f"a{i}"]["finished_ns"] for i in range(2)) > max(
        rows[f"s{i}"]["finished_ns"] for i in range(4)
    )
