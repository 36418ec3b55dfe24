import math

import pytest

from core.workload import load_azure
from tests.workload.helpers import assert_trace_error, write

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.fixture(scope="module")
def shipped():
    return {kind: load_azure(kind=kind) for kind in ("code", "conv")}


def test_shipped_counts_and_first_rows(shipped):
    code, conv = shipped["code"], shipped["conv"]
    assert (len(code), len(conv)) == (8819, 19366)
    # First code row: 2023-11-16 18:17:03.9799600,4808,10
    assert (code[0].arrival_time, code[0].prompt_len, code[0].output_len) == (0.0, 4808, 10)
    # Second row is 0.052 s later (18:17:04.0319600).
    assert code[1].arrival_time == pytest.approx(0.052, abs=1e-9)
    assert (code[1].prompt_len, code[1].output_len) == (3180, 8)
    for w in (code, conv):
        assert w.params["zero_token_rows"] == 0
        assert all(r.prompt_len > 0 and r.output_len > 0 for r in w)
        assert all(r.prompt_token_ids is None for r in w)
        times = [r.arrival_time for r in w]
        assert times == sorted(times)
        assert 3000 < w.duration < 3600  # one hour of production traffic
        assert len(w.sources) == 1 and w.sources[0].endswith(".csv")


def test_shipped_length_statistics(shipped):
    code = shipped["code"]
    mean_prompt = sum(r.prompt_len for r in code) / len(code)
    mean_output = sum(r.output_len for r in code) / len(code)
    # Code requests: long contexts, short outputs (Splitwise Table/Fig. 3).
    assert 1500 < mean_prompt < 2500
    assert 10 < mean_output < 40


def test_limit_keeps_the_first_rows(shipped):
    head = load_azure(kind="conv", limit=100)
    assert [r.request_id for r in head] == [r.request_id for r in shipped["conv"].requests[:100]]


def test_fraction_of_seconds_with_seven_digits(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        HEADER + "2023-11-16 23:59:59.9999999,5,6\n2023-11-17 00:00:00.5000001,7,8\n",
    )
    w = load_azure(path)
    assert w[1].arrival_time == pytest.approx(0.5000002, abs=1e-9)
    assert w[1].request_id == "t:1"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("clamp", [(1, 5), (3, 1)]), ("keep", [(0, 5), (3, 0)]), ("drop", [])],
)
def test_zero_token_rows_policy(tmp_path, policy, expected):
    path = write(
        tmp_path, "z.csv", HEADER + "2023-11-16 18:00:00.0,0,5\n2023-11-16 18:00:01.0,3,0\n"
    )
    w = load_azure(path, zero_tokens=policy)
    assert [(r.prompt_len, r.output_len) for r in w] == expected
    assert w.params["zero_token_rows"] == 2


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("2023-11-16 18:00:00.0,5,6\n2023-11-16 18:00:01.0,7\n", 3, "expected 3 fields"),
        ("2023-11-16 18:00:00.0,5,6\n2023-11-16 18:00:01.0,7,x\n", 3, "GeneratedTokens='x'"),
        ("2023-11-16 18:00:00.0,5.5,6\n", 2, "ContextTokens='5.5' is not an integer"),
        ("2023-11-16 18:00:00.0,5,-6\n", 2, "GeneratedTokens=-6 is negative"),
        ("yesterday,5,6\n", 2, "unparsable TIMESTAMP 'yesterday'"),
        ("2023-13-16 18:00:00.0,5,6\n", 2, "unparsable TIMESTAMP"),
        (
            "2023-11-16 18:00:02.0,5,6\n2023-11-16 18:00:03.0,5,6\n2023-11-16 18:00:01.0,5,6\n",
            4,
            "earlier than the previous row",
        ),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, body, line, needle):
    path = write(tmp_path, "bad.csv", HEADER + body)
    with pytest.raises(ValueError) as err:
        load_azure(path)
    assert_trace_error(err, path, line, needle)


def test_bad_header_and_missing_file(tmp_path):
    path = write(tmp_path, "h.csv", "TIME,ContextTokens,GeneratedTokens\n")
    with pytest.raises(ValueError) as err:
        load_azure(path)
    assert_trace_error(err, path, 1, "TIMESTAMP")
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_azure(missing)


def test_arrival_times_are_finite(shipped):
    assert all(math.isfinite(r.arrival_time) for r in shipped["conv"])
