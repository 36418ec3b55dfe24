"""The simulator-speed benchmark runs at --quick scale and writes its report (its speed is
measured, never asserted)."""

from __future__ import annotations

import json

from scripts.bench import sim_speed


def test_sim_speed_quick_writes_a_report(tmp_path, capsys):
    assert sim_speed.main(["--quick", "--limit", "120", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sim-speed.json").read_text())
    assert report["benchmark"] == "sim-speed"
    res = report["results"]
    assert res["requests"] == 120 and res["steps"] >= res["fast_forwarded_steps"] > 0
    assert res["simulated_requests_per_wall_s"] > 0 and res["makespan_s"] > 0
    assert res["metrics"]["num_completed"] == 120
    assert res["step_by_step"]["identical"] is True
    by_id = {t["id"]: t for t in report["targets"]}
    assert by_id["full-trace-under-60s"]["status"] == "not checked"
    assert by_id["fast-forward-exact"]["passed"] is True
    assert "simulated requests / wall s" in capsys.readouterr().out
