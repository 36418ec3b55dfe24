"""Sweeps on Ray: a local Ray instance with two CPUs runs the toy artifact's points."""

import json

import pytest

from core.artifact import RunOptions, Scale, run_artifact

from .toy_artifact import TOY

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")


@pytest.mark.slow
def test_ray_executor_runs_and_resumes(tmp_path):
    out = tmp_path / "toy"
    o = RunOptions(scale=Scale.SMOKE, out=out, jobs=2, executor="ray", progress=False)
    try:
        s = run_artifact(TOY, o)
    except RuntimeError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray could not start here: {exc}")
    assert s.outcome.computed == 5
    claims = {c["id"]: c["passed"] for c in json.loads((out / "claims.json").read_text())}
    assert claims["max-square"] is True
    again = run_artifact(TOY, o)
    assert again.outcome.computed == 0 and again.outcome.reused == 5
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["executor"]["kind"] == "ray"
