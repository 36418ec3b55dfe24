import json
from pathlib import Path

import pytest

from core.workload import (
    load_toolbench,
    load_toolbench_queries,
    sessions_to_interceptions,
    toolbench_root,
)
from tests.workload.helpers import assert_trace_error, common_prefix_len, write


@pytest.fixture(scope="module")
def workload():
    return load_toolbench(tool_duration_s=1.5)


def final_paths():
    """Session id -> the final message path, read straight from the shipped files."""
    out = {}
    for path in sorted(toolbench_root().glob("answer/G*_answer/*.json")):
        ag = json.loads(path.read_text(encoding="utf-8"))["answer_generation"]
        if ag.get("valid_data"):
            sid = f"toolbench:{path.parent.name[:2]}:{path.stem.split('_')[0]}"
            out[sid] = ag["train_messages"][-1]
    return out


def test_one_session_per_valid_trajectory_one_turn_per_assistant_message(workload):
    paths = final_paths()
    sessions = workload.sessions()
    assert len(sessions) == len(paths) == 13
    assert len(workload.params["skipped"]) == 2
    assert sum(len(t) for t in sessions.values()) == len(workload) == 52
    for sid, messages in paths.items():
        turns = sessions[sid]
        assistants = [m for m in messages if m["role"] == "assistant"]
        assert len(turns) == len(assistants)
        called = [(m.get("function_call") or {}).get("name") for m in assistants]
        assert [r.metadata["function"] for r in turns] == called
        assert turns[-1].metadata["tool"] == "Finish"


def test_turns_grow_append_only_from_a_shared_tool_prompt(workload):
    for turns in workload.sessions().values():
        n_tool = turns[0].metadata["tool_prompt_tokens"]
        for prev, nxt in zip(turns, turns[1:], strict=False):
            history = prev.prompt_token_ids + prev.output_token_ids
            assert nxt.prompt_token_ids[: len(history)] == history
            assert nxt.prompt_len - len(history) == nxt.metadata["appended_tokens"]
            assert nxt.metadata["appended_tokens"] >= nxt.metadata["returned_tokens"]
            assert nxt.prompt_token_ids[:n_tool] == turns[0].prompt_token_ids[:n_tool]
    # Trajectories offering the same functions share the whole tool prompt (G1 10 and 11),
    # and every trajectory shares ToolBench's system prompt opening.
    s = workload.sessions()
    a, b = s["toolbench:G1:10"][0], s["toolbench:G1:11"][0]
    assert a.metadata["tool_prompt_id"] == b.metadata["tool_prompt_id"]
    assert (
        common_prefix_len(a.prompt_token_ids, b.prompt_token_ids)
        >= a.metadata["tool_prompt_tokens"]
    )
    firsts = [t[0].prompt_token_ids for t in s.values()]
    assert min(common_prefix_len(firsts[0], f) for f in firsts) > 150


def test_function_results_are_the_next_turns_appended_tokens(workload):
    paths = final_paths()
    for sid, turns in workload.sessions().items():
        messages = paths[sid]
        # Function messages between consecutive assistant messages.
        results_before, pending = [], []
        for m in messages[1:]:
            if m["role"] == "assistant":
                results_before.append(pending)
                pending = []
            elif m["role"] == "function":
                pending.append(m["name"])
        for r, names in zip(turns, results_before, strict=True):
            assert r.think_time_s == pytest.approx(1.5 * len(names))
            assert (r.metadata["returned_tokens"] > 0) == bool(names)
            assert r.metadata["returned_function"] == (names[-1] if names else None)
        arrivals = [r.arrival_time for r in turns]
        assert arrivals == sorted(arrivals)


def test_tools_in_metadata_for_popularity(workload):
    tools = [r.metadata["tool"] for r in workload if r.metadata["tool"] not in (None, "Finish")]
    assert tools.count("seo_api") == 7
    # A called name that is not a listed function (G3 21 calls a tool by its own name).
    odd = [r for r in workload if r.metadata["function"] == "dota_2_steam_web"]
    assert odd and odd[0].metadata["tool"] == "dota_2_steam_web"


def test_fold_into_interceptions(workload):
    folded = sessions_to_interceptions(workload)
    assert len(folded) == 13
    for r in folded:
        turns = workload.sessions()[r.request_id]
        assert r.prompt_token_ids == turns[0].prompt_token_ids
        assert r.output_len == sum(t.output_len for t in turns)
        assert len(r.interceptions) == len(turns) - 1
        assert [i.duration_s for i in r.interceptions] == [t.think_time_s for t in turns[1:]]
        assert [i.returned_tokens for i in r.interceptions] == [
            t.metadata["appended_tokens"] for t in turns[1:]
        ]
        last = turns[-1]
        assert (
            r.prompt_len + r.output_len + r.total_returned_tokens
            == last.prompt_len + last.output_len
        )


def test_queries():
    q = load_toolbench_queries()
    assert len(q) == 10
    tools = [(r.metadata["group"], r.metadata["tools"]) for r in q]
    assert tools[:5] == [("G1", ["SQUAKE"])] * 4 + [("G1", ["Transportistas de Argentina"])]
    # Queries over the same tool share its documentation as a prefix; others do not.
    assert common_prefix_len(q[0].prompt_token_ids, q[1].prompt_token_ids) > 100
    assert common_prefix_len(q[0].prompt_token_ids, q[4].prompt_token_ids) < 10


GOOD = {
    "answer_generation": {
        "valid_data": True,
        "function": [{"name": "f_for_t", "description": 'subfunction for tool "t"'}],
        "train_messages": [
            [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "do it"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "f_for_t", "arguments": "{}"},
                },
            ]
        ],
    }
}


def write_answer(tmp_path: Path, doc) -> Path:
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
    return write(tmp_path, "answer/G1_answer/1_x.json", text)


def test_tiny_valid_trajectory(tmp_path):
    write_answer(tmp_path, GOOD)
    w = load_toolbench(tmp_path, groups=["G1"])
    assert len(w) == 1 and w[0].metadata["tool"] == "t"


def test_malformed_json_names_the_line(tmp_path):
    path = write_answer(tmp_path, '{\n  "answer_generation": {\n    "valid_data": tru\n  }\n}\n')
    with pytest.raises(ValueError) as err:
        load_toolbench(tmp_path, groups=["G1"])
    assert_trace_error(err, path, 3, "invalid JSON")


@pytest.mark.parametrize(
    ("mutate", "line", "needle"),
    [
        (lambda m: m[2].pop("role"), 20, "role must be one of"),
        (lambda m: m[1].update(content=7), 16, "content must be a string or null"),
        (lambda m: m[2].update(function_call="f()"), 20, "function_call must be an object"),
        (lambda m: m.pop(0), 12, "first message must be the system prompt"),
    ],
)
def test_malformed_structure_names_the_line_of_the_object(tmp_path, mutate, line, needle):
    doc = json.loads(json.dumps(GOOD))
    mutate(doc["answer_generation"]["train_messages"][0])
    path = write_answer(tmp_path, doc)
    with pytest.raises(ValueError) as err:
        load_toolbench(tmp_path, groups=["G1"])
    assert_trace_error(err, path, line, needle)
    # The named line is where the offending object opens.
    assert path.read_text().splitlines()[line - 1].strip() == "{"


def test_valid_trajectory_without_messages_and_missing_group(tmp_path):
    doc = {"answer_generation": {"valid_data": True, "function": []}}
    path = write_answer(tmp_path, doc)
    with pytest.raises(ValueError) as err:
        load_toolbench(tmp_path, groups=["G1"])
    assert_trace_error(err, path, 2, "train_messages")
    with pytest.raises(FileNotFoundError, match="G2_answer"):
        load_toolbench(tmp_path, groups=["G2"])
