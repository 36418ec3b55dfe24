"""The ``lora`` benchmark runs end to end at ``--quick`` scale and reports what it promises
(never asserted on speed: a benchmark is a measurement)."""

from __future__ import annotations

import json

import pytest

from scripts.bench import BENCHMARKS
from scripts.bench import lora as bench
from scripts.bench import report as rep


def test_registered():
    assert BENCHMARKS["lora"][0] == "scripts.bench.lora"


def test_batch_smaller_than_the_adapters_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--batch must be at least 4"):
        bench.main(["--quick", "--batch", "2", "--out", str(tmp_path)])


@pytest.mark.slow
def test_quick_run(tmp_path, capsys):
    assert bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "lora.json").read_text())
    rep.validate_report(report)
    systems = report["results"]["systems"]
    assert set(systems) == {"base", "merged", "unmerged-1", "unmerged-4", "peft-1", "peft-4"}
    for s in systems.values():
        assert s["step_s"] > 0 and s["tokens_per_s"] > 0
    assert systems["merged"]["step_over_merged"] == 1.0 == systems["base"]["step_over_base"]
    assert [t["id"] for t in report["targets"]] == ["unmerged-16-vs-merged"]
    assert "x merged" in capsys.readouterr().out
