"""``python -m core.zoo``: unknown models are one clear error; ``compare`` prints shipped and
rebuilt metrics side by side."""

from __future__ import annotations

import json

import pytest

from core.zoo.__main__ import main


def test_unknown_model_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--out", str(tmp_path), "zoo-giant"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'zoo-giant'" in err and "zoo-large" in err
    assert not any(tmp_path.iterdir())  # nothing was started


def _metrics(arith: float) -> dict:
    return {
        "arith_up_to_4": arith,
        "arith_5_to_12": arith / 2,
        "arith_step_accuracy": arith,
        "accuracy": {"retrieval": {"all": 0.5}, "classify": {"all": 0.9}},
        "heldout_loss": {"text": 3.0},
        "training": {"seconds": 600.0},
    }


def test_compare_prints_both_columns(tmp_path, capsys):
    for side, arith in (("shipped", 0.93), ("rebuilt", 0.91)):
        d = tmp_path / side / "zoo-large"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(arith)))
    main(["compare", str(tmp_path / "rebuilt"), str(tmp_path / "shipped")])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "arith <=4 steps" in line)
    assert row.split()[-2:] == ["0.930", "0.910"]
    assert "zoo-small" in out and "missing" in out  # a model absent on one side is named
