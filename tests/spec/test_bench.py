"""The ``spec`` benchmark runs end to end at ``--quick`` scale and reports what it promises
(never asserted on speed: a benchmark is a measurement)."""

from __future__ import annotations

import json

import pytest

from scripts.bench import BENCHMARKS
from scripts.bench import spec as bench


def test_registered():
    assert BENCHMARKS["spec"][0] == "scripts.bench.spec"


@pytest.mark.slow
def test_quick_run(tmp_path, capsys):
    assert bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "spec.json").read_text())
    res = report["results"]
    assert res["lossless"] is True
    assert set(res["systems"]) == {"target", "ngram", "suffix", "draft-model"}
    for name, s in res["systems"].items():
        assert s["tokens_per_s"] > 0
        if name != "target":
            assert 0 <= s["acceptance"] <= 1 and s["expected_speedup"] > 0
    assert res["cost"]["c"] > 0 and min(res["cost"]["v_by_tokens_per_seq"].values()) > 0
    assert "expected" in capsys.readouterr().out
