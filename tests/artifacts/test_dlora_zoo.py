"""dLoRA's real mode on the trained zoo model: the claim measures on hand-made rows, the
request stream, and (when the model and adapters are shipped) the experiment end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from artifacts.dlora import artifact as dl
from artifacts.dlora import zoo
from core.artifact import Results, RunContext, Scale


def rows():
    acc = {
        "acc_arith-total": 0.99,
        "base_acc_arith-total": 0.0,
        "acc_classify-score": 0.7,
        "base_acc_classify-score": 0.1,
    }
    lat = {"slora": 1.0, "vllm": 2.0, "peft": 1.5, "dlora": 0.9}
    return [
        dict(
            policy=p,
            round=r,
            latency_s=v * (1 + r),
            identical_fraction=1.0 - 0.25 * (p == "peft"),
            **acc,
        )
        for r in (0, 1)
        for p, v in lat.items()
    ]


def test_zoo_measures():
    r = Results({"zoo": pd.DataFrame(rows())}, RunContext(Scale.SMOKE, 0, "."))
    assert dl.zoo_adapters_help(r) == pytest.approx(0.6)
    assert dl.zoo_identical(r) == 0.75
    assert dl.zoo_latency_vs_best(r) == pytest.approx(0.9)


def test_no_points_without_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv(zoo.MODEL_ENV, str(tmp_path / "none"))
    assert "no base checkpoint" in zoo.missing()
    assert zoo.zoo_config(4, 1.0, 1, 0) == []


@pytest.mark.slow
@pytest.mark.skipif(bool(zoo.missing()), reason=zoo.missing() or "present")
def test_zoo_experiment_end_to_end():
    (point,) = zoo.zoo_config(6, 20.0, 1, 0)
    out = pd.DataFrame(zoo.run_zoo(point))
    assert set(out.policy) == {"slora", "vllm", "peft", "dlora"}
    assert (out.identical_fraction == 1.0).all()
    assert (out.requests_run == 6).all() and (out.distinct_from_base > 0).all()
