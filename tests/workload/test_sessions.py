"""Session traces: the Marconi authors' trace format, format detection, and the summary of a
session workload."""

import json
from pathlib import Path

import pytest

from core.workload import (
    ChatSessionParams,
    detect_format,
    generate_chat_sessions,
    load_jsonl,
    load_marconi_jsonl,
    load_mooncake,
    load_trace,
    mooncake_trace_path,
    save_jsonl,
    save_marconi_jsonl,
    session_stats,
)
from tests.workload.helpers import assert_trace_error, write

EXAMPLE = Path(__file__).parent / "data" / "marconi_example.jsonl"


# --------------------------------------------------------------------------- the authors' format


def test_load_the_example_trace():
    w = load_marconi_jsonl(EXAMPLE)
    assert len(w) == 5 and list(w.sessions()) == ["marconi:s0", "marconi:s1"]
    s0 = w.sessions()["marconi:s0"]
    assert [r.request_id for r in s0] == ["marconi:s0:t0", "marconi:s0:t1", "marconi:s0:t2"]
    assert [r.think_time_s for r in s0] == pytest.approx([0.0, 2.0, 2.0 / 3])
    assert s0[2].prompt_token_ids[:12] == s0[1].prompt_token_ids + s0[1].output_token_ids
    stats = session_stats(w)
    assert stats["sessions"] == 2 and stats["turns_mean"] == 2.5
    assert stats["prefix_reuse"] == pytest.approx(24 / 39)
    assert stats["think_time_mean_s"] == pytest.approx((2.0 + 2.0 / 3 + 4.0) / 3)
    assert stats["duration_s"] == 5.0
    assert len(load_marconi_jsonl(EXAMPLE, limit=2)) == 2


def test_marconi_jsonl_round_trip(tmp_path):
    w = generate_chat_sessions(ChatSessionParams(num_sessions=4), seed=11)
    back = load_marconi_jsonl(save_marconi_jsonl(w, tmp_path / "t.jsonl"))
    assert len(back) == len(w)
    for a, b in zip(w, back, strict=True):
        assert b.request_id == f"marconi:s{a.session_id.split(':s')[1]}:t{a.turn}"
        assert (b.arrival_time, b.turn) == (a.arrival_time, a.turn)
        assert b.prompt_token_ids == a.prompt_token_ids
        assert b.output_token_ids == a.output_token_ids
        assert b.think_time_s == pytest.approx(a.think_time_s)
    # Lengths only: a trace without token ids loads without them.
    lengths = [
        {"session_id": "a", "turn_id": 0, "ts": 0.5, "num_input_tokens": 7, "num_output_tokens": 2}
    ]
    path = write(tmp_path, "len.jsonl", "\n".join(json.dumps(x) for x in lengths) + "\n")
    (r,) = load_marconi_jsonl(path)
    assert (r.prompt_len, r.output_len, r.prompt_token_ids, r.session_id) == (
        7,
        2,
        None,
        "marconi:sa",
    )
    assert session_stats(load_marconi_jsonl(path))["prefix_reuse"] == 0.0


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ('{"session_id": 0, "turn_id": 1, "num_input_tokens": 3}', ["missing", "ts"]),
        ('{"session_id": 0, "turn_id": 1, "ts": 1.0, "num_output_tokens": 1}', ["input_tokens"]),
        (
            '{"session_id": 0, "turn_id": 1, "ts": 1, "num_input_tokens": 3, '
            '"input_tokens": [1, 2], "num_output_tokens": 1}',
            ["num_input_tokens=3", "2 ids"],
        ),
        (
            '{"session_id": 0, "turn_id": -1, "ts": 1, "num_input_tokens": 3, '
            '"num_output_tokens": 1}',
            ["turn_id=-1"],
        ),
        (
            '{"session_id": 0, "turn_id": 0, "ts": 9, "num_input_tokens": 3, '
            '"num_output_tokens": 1}',
            ["turn 0", "repeats line 1"],
        ),
        (
            '{"session_id": 0, "turn_id": 1, "ts": 1, "num_input_tokens": 3, '
            '"num_output_tokens": 1',
            ["invalid JSON"],
        ),
    ],
)
def test_bad_marconi_line_names_file_and_line(tmp_path, line, needles):
    good = '{"session_id": 0, "turn_id": 0, "ts": 0, "num_input_tokens": 2, "num_output_tokens": 1}'
    path = write(tmp_path, "bad.jsonl", f"{good}\n\n{line}\n")
    with pytest.raises(ValueError) as err:
        load_marconi_jsonl(path)
    assert_trace_error(err, path, 3, *needles)


def test_turn_earlier_than_the_previous_one_is_an_error(tmp_path):
    rows = [
        '{"session_id": 0, "turn_id": 0, "ts": 5, "num_input_tokens": 2, "num_output_tokens": 1}',
        '{"session_id": 0, "turn_id": 1, "ts": 4, "num_input_tokens": 4, "num_output_tokens": 1}',
    ]
    path = write(tmp_path, "order.jsonl", "\n".join(rows) + "\n")
    with pytest.raises(ValueError) as err:
        load_marconi_jsonl(path)
    assert_trace_error(err, path, 2, "earlier than turn 0", "line 1")


def test_load_trace_detects_marconi_mooncake_and_ours(tmp_path):
    with open(mooncake_trace_path(), encoding="utf-8") as f:
        head = [next(f) for _ in range(3)]
    moon = write(tmp_path, "moon.jsonl", "".join(head))
    ours = save_jsonl(
        generate_chat_sessions(ChatSessionParams(num_sessions=2), 1), tmp_path / "ours.jsonl"
    )
    assert detect_format(EXAMPLE) == "marconi"
    assert detect_format(moon) == "mooncake"
    assert detect_format(ours) == "servelab"
    assert load_trace(EXAMPLE) == load_marconi_jsonl(EXAMPLE)
    assert load_trace(moon, expand_tokens=True) == load_mooncake(moon, expand_tokens=True)
    assert load_trace(ours) == load_jsonl(ours)
    saved = save_marconi_jsonl(load_trace(ours), tmp_path / "m.jsonl")
    assert detect_format(saved) == "marconi"


def test_mooncake_requests_are_independent_sessions():
    w = load_mooncake(limit=50, expand_tokens=True)
    stats = session_stats(w)
    assert stats["sessions"] == stats["requests"] == 50 and stats["turns_max"] == 1
    assert stats["prefix_reuse"] == 0.0  # reuse there is across requests, through hash_ids
