"""A deterministic, dependency-free stand-in tokenizer for text traces.

No tokenizer weights can be downloaded here, yet text traces (LooGLE, ToolBench) must become
token ids so prefix caches see real shared prefixes. :class:`HashTokenizer` splits text into
words and punctuation, cuts long words into pieces of at most ``max_piece_chars`` characters,
and maps each piece to an id with a stable hash (BLAKE2b). It is:

- deterministic across processes and machines (never Python's salted ``hash()``);
- prefix-stable: equal text gives equal ids, so text shared by two prompts becomes a shared
  token prefix (as long as the shared text ends at a word boundary);
- approximate in counts: about one token per 3.5 characters of English prose (Llama-like BPE
  tokenizers give 3.5-4.5), but not equal to any real tokenizer's count. It cannot decode.

Any object with ``encode(text) -> list[int]`` satisfies :class:`Tokenizer`, so a real Hugging
Face tokenizer can be passed to the loaders instead.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Protocol, runtime_checkable

# Words (letters, digits, underscore) or single non-space symbols; whitespace is dropped, as
# BPE tokenizers mostly fold a leading space into the following word's token.
_PIECE_RE = re.compile(r"\w+|[^\w\s]")


@runtime_checkable
class Tokenizer(Protocol):
    """Anything that turns text into token ids.

    Loaders encode a prompt piece by piece and concatenate the ids, so ``encode`` must not
    add special tokens per call (wrap a Hugging Face tokenizer with
    ``add_special_tokens=False``).
    """

    def encode(self, text: str) -> list[int]: ...


@lru_cache(maxsize=1 << 18)
def _piece_id(piece: str, vocab_size: int, n_special: int) -> int:
    digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
    return n_special + int.from_bytes(digest, "little") % (vocab_size - n_special)


class HashTokenizer:
    """Text -> token ids by hashing word pieces; see the module docstring for guarantees.

    Ids ``0 .. n_special-1`` are reserved and never produced by :meth:`encode`
    (``PAD=0, BOS=1, EOS=2, SEP=3`` with the default ``n_special=4``); every produced id is in
    ``[n_special, vocab_size)``. Distinct pieces may collide on an id (as in any hashed
    vocabulary); with the default 32,000 ids that is rare and harmless for cache studies.
    """

    PAD = 0
    BOS = 1
    EOS = 2
    SEP = 3

    def __init__(self, vocab_size: int = 32000, max_piece_chars: int = 4, n_special: int = 4):
        if n_special < 0 or vocab_size <= n_special:
            raise ValueError(f"need 0 <= n_special < vocab_size, got {n_special}, {vocab_size}")
        if max_piece_chars < 1:
            raise ValueError(f"max_piece_chars must be >= 1, got {max_piece_chars}")
        self.vocab_size = vocab_size
        self.max_piece_chars = max_piece_chars
        self.n_special = n_special

    def __repr__(self) -> str:
        return (
            f"HashTokenizer(vocab_size={self.vocab_size}, "
            f"max_piece_chars={self.max_piece_chars}, n_special={self.n_special})"
        )

    def pieces(self, text: str) -> list[str]:
        """The text pieces that become tokens, in order (whitespace is not a piece)."""
        k = self.max_piece_chars
        out: list[str] = []
        for m in _PIECE_RE.finditer(text):
            w = m.group()
            if len(w) <= k:
                out.append(w)
            else:
                out.extend(w[i : i + k] for i in range(0, len(w), k))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; equal text always gives equal ids."""
        v, s = self.vocab_size, self.n_special
        return [_piece_id(p, v, s) for p in self.pieces(text)]

    def count(self, text: str) -> int:
        """Number of tokens :meth:`encode` would return, without hashing."""
        return len(self.pieces(text))
