import ast
import json

import pytest

from core.workload import HashTokenizer, load_loogle, loogle_path
from tests.workload.helpers import assert_trace_error, common_prefix_len, write


@pytest.fixture(scope="module")
def both():
    return load_loogle(task="both")


def questions_in_file(task):
    with open(loogle_path(task), encoding="utf-8") as f:
        return [len(ast.literal_eval(json.loads(line)["qa_pairs"])) for line in f]


def test_shipped_counts():
    long, short = load_loogle(task="longdep"), load_loogle(task="shortdep")
    assert questions_in_file("longdep") == [6, 9, 11, 10, 7]
    assert (len(long), len(long.sessions())) == (43, 5)
    assert (len(short), len(short.sessions())) == (80, 5)
    assert {r.metadata["question_type"] for r in long} == {
        "comprehension_and_reasoning",
        "multiple_information_retrieval",
        "computation",
        "timeline_reorder",
    }
    assert {r.metadata["question_type"] for r in short} == {None}
    assert all(r.arrival_time == 0.0 for r in long)


def test_one_document_in_both_files_is_one_session(both):
    sessions = both.sessions()
    assert (len(both), len(sessions)) == (123, 9)
    picardo = [t for t in sessions.values() if t[0].metadata["title"] == "José Luis Picardo"]
    assert len(picardo) == 1
    turns = picardo[0]
    assert len(turns) == 6 + 11
    assert {r.metadata["task"] for r in turns} == {"longdep", "shortdep"}
    assert [r.turn for r in turns] == list(range(17))


def test_questions_share_the_document_prefix(both):
    tok = HashTokenizer()
    sessions = list(both.sessions().values())
    for turns in sessions:
        n_doc = turns[0].metadata["document_tokens"]
        assert n_doc > 10_000  # 54k-127k characters
        for r in turns:
            assert r.metadata["document_tokens"] == n_doc
            assert r.prompt_token_ids[:n_doc] == turns[0].prompt_token_ids[:n_doc]
            assert r.prompt_len > n_doc
    a, b = sessions[0][0], sessions[1][0]
    assert common_prefix_len(a.prompt_token_ids, b.prompt_token_ids) < 10
    # The prompt ends with the question; the reference output is the answer's tokens.
    with open(loogle_path("longdep"), encoding="utf-8") as f:
        first = json.loads(f.readline())
    qa = ast.literal_eval(first["qa_pairs"])[0]
    r = next(r for r in both if r.request_id == "loogle:longdep:0:0")
    assert r.prompt_token_ids == tok.encode(first["input"]) + tok.encode(
        f"Question: {qa['Q']} Answer:"
    )
    assert r.output_token_ids == tok.encode(qa["A"]) and r.output_len == len(r.output_token_ids)


def test_truncation_document_limit_and_fixed_output():
    w = load_loogle(task="shortdep", max_prompt_len=4096, max_documents=2, output_len=32)
    assert len(w.sessions()) == 2
    assert len(w) == 11 + 12
    assert all(r.prompt_len <= 4096 and r.output_len == 32 for r in w)
    assert all(r.output_token_ids is None for r in w)
    for turns in w.sessions().values():
        shared = min(r.metadata["document_tokens"] for r in turns)
        assert shared > 3800
        assert all(r.prompt_token_ids[:shared] == turns[0].prompt_token_ids[:shared] for r in turns)


def doc_line(**fields):
    rec = {
        "input": "A long document.",
        "title": "T",
        "qa_pairs": "[{'Q': 'What?', 'A': 'This.', 'S': 'x'}]",
        "output": "none",
    }
    rec.update(fields)
    return json.dumps({k: v for k, v in rec.items() if v != "DROP"}) + "\n"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("not json\n", "invalid JSON"),
        (doc_line(input="DROP"), "missing field 'input'"),
        (doc_line(title=3), "title must be a string"),
        (doc_line(qa_pairs="[{'Q': 'x', 'A': print('executed')}]"), "not a valid Python literal"),
        (doc_line(qa_pairs="__import__('os').getcwd()"), "not a valid Python literal"),
        (doc_line(qa_pairs="{'Q': 'x'}"), "qa_pairs must be a list"),
        (doc_line(qa_pairs="[{'Q': 'x'}]"), "qa_pairs[0] has no 'A'"),
        (doc_line(qa_pairs="[{'Q': 1, 'A': 'a'}]"), "qa_pairs[0]['Q'] must be a string"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, needle, capsys):
    path = write(tmp_path, "qa.jsonl", doc_line() + bad)
    with pytest.raises(ValueError) as err:
        load_loogle(path)
    assert_trace_error(err, path, 2, needle)
    assert "executed" not in capsys.readouterr().out  # literal_eval never runs code


def test_small_file_and_missing_file(tmp_path):
    path = write(tmp_path, "shortdep_qa.jsonl", doc_line() + doc_line(input="Other text."))
    w = load_loogle(path)
    assert len(w) == 2 and len(w.sessions()) == 2
    assert w[0].metadata["task"] == "shortdep"
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        load_loogle(tmp_path / "gone.jsonl")
