"""``python -m scripts.bench collectives --quick`` runs and writes its report (not a timing test:
the ratios are printed, never asserted)."""

import json

import pytest

from scripts.bench import BENCHMARKS, collectives


@pytest.mark.slow
def test_quick_run_writes_ratios_for_every_point(tmp_path, capsys):
    assert collectives.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "collectives.json").read_text())
    points = report["results"]["gloo"]["points"]
    assert {p["collective"] for p in points} == set(collectives.GLOO_COLLECTIVES)
    assert len(points) == len(collectives.QUICK_SIZES) * len(collectives.GLOO_COLLECTIVES)
    assert all(p["measured_s"] > 0 and p["ratio"] > 0 for p in points)
    assert set(report["results"]["vidur"]) == {"a100-80g", "h100-sxm"}
    assert "model/measured" in capsys.readouterr().out
    assert "collectives" in BENCHMARKS
