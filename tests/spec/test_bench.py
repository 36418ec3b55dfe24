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


@pytest.mark.parametrize("kind", ["arith", "text"])
def test_task_prompts_are_held_out_and_deterministic(kind):
    from core.zoo.build import final_eval_set, heldout_documents

    def encode(text):
        return [ord(c) for c in text]

    prompts = bench._task_prompts(kind, 4, encode)
    assert len(prompts) == 4 and prompts == bench._task_prompts(kind, 4, encode)
    texts = ["".join(map(chr, p)) for p in prompts]
    if kind == "arith":
        held_out = {e.prompt for e in final_eval_set() if e.task == "arith"}
        assert set(texts) <= held_out and len(set(texts)) == 4
    else:
        document = heldout_documents()[0][1]
        assert all(t.strip() in document for t in texts)


def test_task_prompts_refuse_an_unknown_kind():
    with pytest.raises(ValueError, match="'random'"):
        bench._task_prompts("random", 2, list)


@pytest.mark.slow
def test_zoo_pair_on_arith(tmp_path):
    pytest.importorskip("tokenizers")
    bench.main(["--quick", "--zoo", "--threads", "1", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "spec.json").read_text())["results"]
    assert res["lossless"] is True and res["prompts"] == "arith"
    assert res["models"].endswith("zoo-small")
