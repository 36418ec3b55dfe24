import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.workload import (
    AgenticParams,
    ChatSessionParams,
    Interception,
    Request,
    Workload,
    azure_trace_path,
    detect_format,
    generate_agentic_sessions,
    generate_chat_sessions,
    load_jsonl,
    load_loogle,
    load_mooncake,
    load_toolbench,
    load_trace,
    loogle_path,
    mooncake_trace_path,
    save_jsonl,
    toolbench_root,
)
from tests.workload.helpers import assert_trace_error, write


def roundtrip(w: Workload, tmp_path) -> Workload:
    return load_jsonl(save_jsonl(w, tmp_path / "w.jsonl"))


def test_roundtrip_of_loaded_and_generated_workloads(tmp_path):
    workloads = [
        load_mooncake(limit=20),
        load_loogle(task="longdep", max_documents=1, max_prompt_len=2000),
        load_toolbench(max_trajectories=3),
        generate_chat_sessions(ChatSessionParams(num_sessions=5, system_prompt_len=16)),
        generate_agentic_sessions(
            AgenticParams(
                num_sessions=2,
                steps_mean=4,
                tool_prompt_len=64,
                observation_len_mean=50,
                interceptions=True,
            )
        ),
    ]
    for w in workloads:
        back = roundtrip(w, tmp_path)
        assert back == w, w.name
        assert back.requests == w.requests
    assert any(r.interceptions for r in workloads[-1])


ints = st.integers(0, 2**31 - 1)
floats = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def requests(draw, i):
    prompt = draw(st.lists(ints, max_size=20))
    output = draw(st.lists(ints, max_size=10))
    with_ids = draw(st.booleans())
    block = draw(st.sampled_from([None, 1, 4, 16]))
    icps = []
    for at in sorted(draw(st.lists(st.integers(0, len(output)), max_size=3))):
        ret = draw(st.lists(ints, max_size=5))
        icps.append(
            Interception(
                after_output_tokens=at,
                duration_s=draw(floats),
                returned_tokens=len(ret),
                kind=draw(st.text(max_size=6)),
                returned_token_ids=tuple(ret) if draw(st.booleans()) else None,
            )
        )
    return Request(
        request_id=f"r{i}-" + draw(st.text(max_size=6)),
        arrival_time=draw(floats),
        prompt_len=len(prompt),
        output_len=len(output),
        prompt_token_ids=prompt if with_ids else None,
        block_hashes=draw(
            st.lists(ints, min_size=-(-len(prompt) // block), max_size=-(-len(prompt) // block))
        )
        if block
        else None,
        block_size=block,
        session_id=draw(st.none() | st.text(max_size=6)),
        turn=draw(st.integers(0, 100)),
        think_time_s=draw(floats),
        output_token_ids=output if draw(st.booleans()) else None,
        interceptions=icps,
        metadata=draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    )


@st.composite
def workloads(draw):
    n = draw(st.integers(0, 6))
    return Workload(
        name=draw(st.text(max_size=10)),
        requests=[draw(requests(i)) for i in range(n)],
        sources=draw(st.lists(st.text(max_size=10), max_size=2)),
        params=draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(workloads())
def test_roundtrip_is_exact_for_any_workload(tmp_path, w):
    assert roundtrip(w, tmp_path) == w


def test_headerless_hand_written_file(tmp_path):
    path = write(
        tmp_path,
        "mine.jsonl",
        '{"request_id": "b", "arrival_time": 2, "prompt_len": 3, "output_len": 1}\n\n'
        '{"request_id": "a", "arrival_time": 1, "prompt_len": 2, "output_len": 4, "prompt_token_ids": [5, 6]}\n',
    )
    w = load_jsonl(path)
    assert w.name == "mine" and [r.request_id for r in w] == ["a", "b"]
    assert w[0].arrival_time == 1.0 and isinstance(w[0].arrival_time, float)
    assert load_trace(path) == w
    assert len(load_jsonl(path, limit=1)) == 1


GOOD = '{"request_id": "a", "arrival_time": 0.5, "prompt_len": 2, "output_len": 1}'


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ('{"request_id": "x", "arrival_time": 0', "invalid JSON"),
        ('{"request_id": "x", "arrival_time": 0, "prompt_len": 2}', "missing field 'output_len'"),
        (
            '{"request_id": "x", "arrival_time": 0, "prompt_len": 2, "output_len": 1, "prompt": 1}',
            "unknown field(s) ['prompt']",
        ),
        (
            '{"request_id": "x", "arrival_time": "0", "prompt_len": 2, "output_len": 1}',
            "arrival_time must be a finite non-negative number",
        ),
        (
            '{"request_id": "x", "arrival_time": 1e999, "prompt_len": 2, "output_len": 1}',
            "arrival_time must be a finite",
        ),
        (
            '{"request_id": "x", "arrival_time": 0, "prompt_len": -2, "output_len": 1}',
            "prompt_len=-2 is negative",
        ),
        (
            '{"request_id": "x", "arrival_time": 0, "prompt_len": 2, "output_len": 1, "prompt_token_ids": [1]}',
            "1 prompt_token_ids but prompt_len=2",
        ),
        (
            '{"request_id": "x", "arrival_time": 0, "prompt_len": 2, "output_len": 1, "interceptions": [{"after_output_tokens": 5, "duration_s": 1, "returned_tokens": 0}]}',
            "beyond output_len=1",
        ),
        (
            '{"request_id": "x", "arrival_time": 0, "prompt_len": 2, "output_len": 1, "interceptions": [{"duration_s": 1, "returned_tokens": 0}]}',
            "interceptions[0] is missing 'after_output_tokens'",
        ),
        (
            '{"request_id": "a", "arrival_time": 0, "prompt_len": 2, "output_len": 1}',
            "duplicate request_id 'a' (first on line 2)",
        ),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, needle):
    header = json.dumps({"format": "servelab-workload", "version": 1, "name": "t"})
    path = write(
        tmp_path, "w.jsonl", "\n".join([header, GOOD, bad, GOOD.replace('"a"', '"z"')]) + "\n"
    )
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    assert_trace_error(err, path, 3, needle)


def test_bad_header_version(tmp_path):
    path = write(
        tmp_path, "w.jsonl", '{"format": "servelab-workload", "version": 99}\n' + GOOD + "\n"
    )
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    assert_trace_error(err, path, 1, "unsupported servelab-workload version 99")


def test_unserializable_metadata_does_not_clobber_an_existing_file(tmp_path):
    good = Workload("w", [Request("a", 0.0, 1, 1)])
    path = save_jsonl(good, tmp_path / "w.jsonl")
    bad = Workload("w", [Request("a", 0.0, 1, 1, metadata={"x": object()})])
    with pytest.raises(TypeError, match="request 'a'"):
        save_jsonl(bad, path)
    assert load_jsonl(path) == good
    assert list(tmp_path.iterdir()) == [path]


def test_load_trace_detects_every_format(tmp_path):
    assert detect_format(azure_trace_path("code")) == "azure"
    assert detect_format(mooncake_trace_path()) == "mooncake"
    assert detect_format(loogle_path("shortdep")) == "loogle"
    assert detect_format(toolbench_root()) == "toolbench"
    ours = save_jsonl(load_mooncake(limit=3), tmp_path / "ours.jsonl")
    assert detect_format(ours) == "servelab"
    assert len(load_trace(azure_trace_path("conv"), limit=5)) == 5
    assert load_trace(mooncake_trace_path(), limit=3) == load_mooncake(limit=3)
    assert load_trace(ours) == load_mooncake(limit=3)
    assert len(load_trace(loogle_path("longdep"))) == 43


def test_load_trace_rejects_unknown_empty_and_missing(tmp_path):
    unknown = write(tmp_path, "u.jsonl", '\n{"prompt": "hi"}\n')
    with pytest.raises(ValueError) as err:
        load_trace(unknown)
    assert_trace_error(err, unknown, 2, "unrecognised JSON trace record")
    csv = write(tmp_path, "u.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError) as err:
        load_trace(csv)
    assert_trace_error(err, csv, 1, "unrecognised trace format")
    empty = write(tmp_path, "e.jsonl", "\n\n")
    with pytest.raises(ValueError) as err:
        load_trace(empty)
    assert_trace_error(err, empty, 1, "empty file")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_trace(tmp_path / "absent.jsonl")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_jsonl(tmp_path / "absent.jsonl")
