import hashlib
import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from core.data import REPO_ROOT
from core.workload import HashTokenizer, Tokenizer, loogle_path


def test_ids_are_blake2b_of_pieces_and_in_range():
    tok = HashTokenizer(vocab_size=1000, n_special=4)
    ids = tok.encode("Hello, world")
    assert tok.pieces("Hello, world") == ["Hell", "o", ",", "worl", "d"]
    digest = hashlib.blake2b(b"Hell", digest_size=8).digest()
    assert ids[0] == 4 + int.from_bytes(digest, "little") % 996
    assert all(4 <= i < 1000 for i in ids)
    assert isinstance(tok, Tokenizer)


def test_same_ids_in_another_process_with_another_hash_seed():
    text = "The quick brown fox jumps over the lazy dog."
    code = (
        "import json; from core.workload import HashTokenizer; "
        f"print(json.dumps(HashTokenizer().encode({text!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == HashTokenizer().encode(text)


words = st.text(alphabet=st.characters(categories=["L", "N", "P"]), min_size=1, max_size=30)


@given(st.lists(words, min_size=1, max_size=12), st.integers(2, 6))
def test_pieces_are_short_and_text_concatenation_is_prefix_stable(parts, k):
    tok = HashTokenizer(max_piece_chars=k)
    a, b = " ".join(parts[: len(parts) // 2]), " ".join(parts[len(parts) // 2 :])
    assert all(1 <= len(p) <= k for p in tok.pieces(a + " " + b))
    # Shared text ending at whitespace gives a shared token prefix.
    assert tok.encode(a + " " + b) == tok.encode(a) + tok.encode(b)
    assert tok.count(a) == len(tok.encode(a))


def test_counts_approximate_a_bpe_on_real_prose():
    tok = HashTokenizer()
    with open(loogle_path("longdep"), encoding="utf-8") as f:
        doc = json.loads(f.readline())["input"]
    chars_per_token = len(doc) / tok.count(doc)
    assert 3.0 <= chars_per_token <= 4.5, chars_per_token


def test_reserved_ids_and_bad_arguments():
    import pytest

    assert min(HashTokenizer(vocab_size=50, n_special=10).encode("a b c d e f g h i j")) >= 10
    with pytest.raises(ValueError):
        HashTokenizer(vocab_size=4, n_special=4)
    with pytest.raises(ValueError):
        HashTokenizer(max_piece_chars=0)
