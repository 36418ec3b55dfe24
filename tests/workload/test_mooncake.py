import json

import pytest

from core.workload import block_token_ids, expand_block_tokens, load_mooncake
from tests.workload.helpers import assert_trace_error, common_prefix_len, write


@pytest.fixture(scope="module")
def shipped():
    return load_mooncake()


@pytest.fixture(scope="module")
def expanded():
    return load_mooncake(limit=60, expand_tokens=True)


def test_shipped_trace(shipped):
    assert len(shipped) == 3993
    assert shipped[0].arrival_time == 0.0
    assert shipped.duration == pytest.approx(1022.025)
    first = shipped[0]
    assert (first.prompt_len, first.output_len, first.block_size) == (40160, 6, 512)
    assert first.block_hashes == list(range(79))
    assert all(len(r.block_hashes) == -(-r.prompt_len // 512) for r in shipped)
    assert all(r.prompt_token_ids is None for r in shipped)


def test_expansion_equal_hashes_give_equal_blocks(expanded):
    blocks: dict[int, list[int]] = {}
    for r in expanded:
        assert len(r.prompt_token_ids) == r.prompt_len
        for k, h in enumerate(r.block_hashes):
            block = r.prompt_token_ids[k * 512 : (k + 1) * 512]
            known = blocks.setdefault(h, block)
            n = min(len(known), len(block))  # the last block of a prompt may be cut
            assert known[:n] == block[:n], h
    # Different hash ids give different blocks.
    assert block_token_ids(1) != block_token_ids(2)
    assert len(set(block_token_ids(7))) > 400


def test_shared_hash_prefixes_become_shared_token_prefixes(expanded):
    # Lines 43 and 50 of the shipped file share their first 57 blocks.
    a, b = expanded[42], expanded[49]
    m = common_prefix_len(a.block_hashes, b.block_hashes)
    assert m == 57
    assert common_prefix_len(a.prompt_token_ids, b.prompt_token_ids) >= m * 512
    assert (
        a.prompt_token_ids[m * 512 : (m + 1) * 512] != b.prompt_token_ids[m * 512 : (m + 1) * 512]
    )


def test_expand_block_tokens_truncates_last_block():
    ids = expand_block_tokens([5, 9], 700)
    assert len(ids) == 700
    assert ids[:512] == list(block_token_ids(5)) and ids[512:] == list(block_token_ids(9))[:188]
    with pytest.raises(ValueError, match="expected 2"):
        expand_block_tokens([5], 700)


def line(**fields):
    rec = {"timestamp": 20, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}
    rec.update(fields)
    return json.dumps({k: v for k, v in rec.items() if v != "DROP"}) + "\n"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json\n", "invalid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
        (line(output_length="DROP"), "missing field 'output_length'"),
        (line(input_length="600"), "input_length must be a non-negative integer, got"),
        (line(input_length=True), "input_length must be a non-negative integer, got"),
        (line(output_length=-1), "output_length=-1 is negative"),
        (line(hash_ids=[1]), "hash_ids has 1 ids but input_length=600 needs ceil(600/512)=2"),
        (line(hash_ids=[1, "x"]), "hash_ids must be a list of integers"),
        (line(timestamp=-5), "timestamp=-5 is negative"),
        (line(timestamp=3), "earlier than the previous line's 10"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, needle):
    text = line(timestamp=0) + line(timestamp=10) + "\n" + bad + line(timestamp=99)
    path = write(tmp_path, "m.jsonl", text)
    with pytest.raises(ValueError) as err:
        load_mooncake(path)
    assert_trace_error(err, path, 4, needle)


def test_small_file_arrivals_in_seconds(tmp_path):
    path = write(tmp_path, "m.jsonl", line(timestamp=1000) + line(timestamp=3500))
    w = load_mooncake(path)
    assert [r.arrival_time for r in w] == [0.0, 2.5]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_mooncake(tmp_path / "missing.jsonl")
