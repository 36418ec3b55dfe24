"""Report helpers of scripts/bench/report.py: targets, report layout, JSON, tables."""

from __future__ import annotations

import json
import math

import pytest

from scripts.bench import report as rep


def test_target_pass_fail_and_not_checked():
    t = rep.target("x", "ratio", 2.5, ">=", 2.0, "x")
    assert (t["passed"], t["status"], t["reason"]) == (True, rep.STATUS_PASS, None)
    t = rep.target("x", "share", 12.0, "<=", 10.0, "%")
    assert (t["passed"], t["status"]) == (False, rep.STATUS_FAIL)
    t = rep.target("x", "share", None, "<=", 10.0, "%", reason="engine missing")
    assert (t["passed"], t["status"], t["reason"]) == (
        None,
        rep.STATUS_NOT_CHECKED,
        "engine missing",
    )
    assert rep.target("x", "nan", math.nan, ">=", 1.0)["measured"] is None
    assert rep.target("x", "no reason", None, ">=", 1.0)["reason"] == "not measured"
    assert set(t) == set(rep.TARGET_KEYS) and t["measured_on_this_machine"] is True
    with pytest.raises(ValueError):
        rep.target("x", "bad op", 1.0, "=>", 1.0)


def _report(**over):
    targets = [
        rep.target("a", "a", 3.0, ">=", 2.0),
        rep.target("b", "b", 1.0, ">=", 2.0),
        rep.target("c", "c", None, ">=", 2.0, reason="skipped"),
    ]
    prov = {"git": {"commit": "abc", "dirty": False}, "host": {"cpu_count": 2}}
    r = rep.make_report("demo", {"scale": "quick"}, {"fp32": {"x": 1.0}}, targets, prov, 1.5)
    r.update(over)
    return r


def test_make_report_layout_and_summary():
    r = _report()
    assert tuple(r) == rep.REPORT_KEYS
    assert r["schema"] == rep.SCHEMA and r["benchmark"] == "demo"
    assert r["measured_on_this_machine"] is True and "measured on the machine" in r["note"]
    assert r["summary"] == {rep.STATUS_PASS: 1, rep.STATUS_FAIL: 1, rep.STATUS_NOT_CHECKED: 1}
    assert "load_average_end" in r["provenance"]
    assert r["created"].endswith("Z") and r["elapsed_s"] == 1.5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("targets"), "lacks keys: targets"),
        (lambda r: r.update(schema="other"), "schema"),
        (lambda r: r["targets"][0].pop("passed"), "lacks keys: passed"),
        (lambda r: r["targets"][0].update(status="maybe"), "unknown status"),
        (lambda r: r["targets"][0].update(measured=None), "null exactly when"),
        (lambda r: r["provenance"].pop("git"), "provenance lacks"),
        (lambda r: r["results"].update(bad=math.nan), "Out of range float"),
    ],
)
def test_validate_report_names_the_problem(change, message):
    r = _report()
    change(r)
    with pytest.raises(ValueError, match=message):
        rep.validate_report(r)


def test_write_json_is_strict_and_atomic(tmp_path):
    path = rep.write_json(tmp_path / "sub" / "x.json", {"a": math.nan, "b": (1, 2), 3: math.inf})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2], "3": None}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left
    rep.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


def test_write_json_failure_keeps_the_old_file(tmp_path):
    path = rep.write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(TypeError):
        rep.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_format_table():
    text = rep.format_table(
        ["name", "value"],
        [["a", 1.23456], ["bb", None], ["c", math.nan]],
        title="T",
        formats=[None, ".2f"],
    )
    lines = text.splitlines()
    assert lines[0] == "T"
    assert lines[1].split() == ["name", "value"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert lines[3].endswith("1.23") and lines[4].endswith("-") and lines[5].endswith("-")
    assert len({len(line) for line in lines[1:4]}) == 1  # numbers right-aligned to one width
    with pytest.raises(ValueError):
        rep.format_table(["a"], [[1]], formats=[None, None])


def test_targets_table_shows_reason_when_not_checked():
    text = rep.targets_table(
        [
            rep.target("a", "a", 3.0, ">=", 2.0, "x"),
            rep.target("c", "c", None, ">=", 2.0, reason="no engine"),
        ]
    )
    assert ">= 2 x" in text and "3 x" in text and "pass" in text
    assert "not checked: no engine" in text


def test_provenance_records_code_host_and_threads():
    import torch  # noqa: F401 - provenance reports torch's threads once torch is imported

    prov = rep.provenance()
    assert set(prov["git"]) >= {"commit", "dirty"}
    host = prov["host"]
    assert host["cpu_count"] >= 1 and host["usable_cpus"] >= 1
    assert host["torch_threads"] >= 1 and host["torch_version"]
    assert prov["packages"]["torch"] and prov["packages"]["transformers"]
    assert prov["load_average"] is None or len(prov["load_average"]) == 3
