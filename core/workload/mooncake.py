"""Loader for the Mooncake trace (FAST'25; Apache-2.0) and its block-hash expansion.

Each JSONL line is ``{"timestamp": ms, "input_length": n, "output_length": m,
"hash_ids": [...]}``: one hash id per 512-token block of the prompt, equal ids meaning equal
block content. That is enough for prefix caches that work on blocks; engines that need token
ids get them from :func:`expand_block_tokens`, which turns every hash id into a fixed
pseudo-random block, so equal ids give equal tokens and shared hash prefixes give shared token
prefixes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from pathlib import Path

import numpy as np

from core.data import data_path, open_data_file
from core.workload.errors import TraceFormatError, parse_json_line, require
from core.workload.schema import Request, Workload

MOONCAKE_BLOCK_SIZE = 512

# Mixed into every block seed so Mooncake blocks do not coincide with generator streams.
_BLOCK_SALT = 0x6D6F6F6E  # "moon"


def mooncake_trace_path() -> Path:
    """Path of the shipped Mooncake trace (3,993 requests)."""
    return data_path("traces", "mooncake", "synthetic_trace.jsonl")


@lru_cache(maxsize=8)
def _int_pool(vocab_size: int) -> tuple[int, ...]:
    # One shared int object per id: expanded prompts then cost 8 bytes per token, not 36.
    return tuple(range(vocab_size))


@lru_cache(maxsize=1 << 16)
def block_token_ids(
    hash_id: int, block_size: int = MOONCAKE_BLOCK_SIZE, vocab_size: int = 32000, n_special: int = 4
) -> tuple[int, ...]:
    """The ``block_size`` token ids of the block named ``hash_id``.

    A pure function of its arguments (seeded by ``hash_id``), with ids in
    ``[n_special, vocab_size)`` like :class:`~core.workload.tokenize.HashTokenizer`.
    """
    rng = np.random.default_rng([_BLOCK_SALT, hash_id])
    ids = rng.integers(n_special, vocab_size, size=block_size)
    return itemgetter(*ids.tolist())(_int_pool(vocab_size)) if block_size > 1 else (int(ids[0]),)


def expand_block_tokens(
    hash_ids: list[int], length: int, block_size: int = MOONCAKE_BLOCK_SIZE, vocab_size: int = 32000
) -> list[int]:
    """Token ids for a prompt of ``length`` tokens named block by block by ``hash_ids``.

    Every id becomes its :func:`block_token_ids` block; the last block is cut so the result
    has exactly ``length`` tokens. Requires ``len(hash_ids) == ceil(length / block_size)``.
    """
    need = -(-length // block_size)
    if len(hash_ids) != need:
        raise ValueError(
            f"{len(hash_ids)} hash ids for length={length} and block_size={block_size} "
            f"(expected {need})"
        )
    blocks = (block_token_ids(h, block_size, vocab_size) for h in hash_ids)
    out = list(chain.from_iterable(blocks))
    del out[length:]
    return out


def load_mooncake(
    path: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    expand_tokens: bool = False,
    vocab_size: int = 32000,
    block_size: int = MOONCAKE_BLOCK_SIZE,
) -> Workload:
    """Load a Mooncake JSONL trace.

    - ``path``: default the shipped ``synthetic_trace.jsonl`` (3,993 requests, ~17 minutes).
    - arrival time = (timestamp - first timestamp) / 1000 seconds; timestamps must not
      decrease. ``prompt_len`` = input_length, ``output_len`` = output_length,
      ``block_hashes`` = hash_ids, ``block_size`` = 512.
    - lengths must match the hashes: a line with ``len(hash_ids) != ceil(input_length / 512)``
      is an error, not silently fixed (every line of the shipped file matches).
    - ``expand_tokens=True`` also fills ``prompt_token_ids`` via :func:`expand_block_tokens`.
      The full shipped trace is 61M prompt tokens (~0.5 GB as Python lists): use ``limit``.
    - ``limit``: keep only the first ``limit`` lines. Blank lines are skipped.

    Request ids are ``"mooncake:<line number - 1>"``. A malformed line raises
    :class:`~core.workload.errors.TraceFormatError` naming ``file:line``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    p = Path(path) if path is not None else mooncake_trace_path()
    name = str(p)
    requests: list[Request] = []
    t_first: float | None = None
    t_prev = float("-inf")
    with open_data_file(p) as f:
        for lineno, text in enumerate(f, start=1):
            if limit is not None and len(requests) >= limit:
                break
            if not text.strip():
                continue
            where = (name, lineno)
            rec = parse_json_line(text, *where)
            ts = require(rec, "timestamp", "nonneg_number", where)
            n_in = require(rec, "input_length", "nonneg_int", where)
            n_out = require(rec, "output_length", "nonneg_int", where)
            hashes = require(rec, "hash_ids", "int_list", where)
            if ts < t_prev:
                raise TraceFormatError(
                    *where, f"timestamp {ts} is earlier than the previous line's {t_prev}"
                )
            t_prev = ts
            need = -(-n_in // block_size)
            if len(hashes) != need:
                raise TraceFormatError(
                    *where,
                    f"hash_ids has {len(hashes)} ids but input_length={n_in} needs "
                    f"ceil({n_in}/{block_size})={need} blocks",
                )
            if any(h < 0 for h in hashes):
                raise TraceFormatError(*where, "hash_ids contains a negative id")
            if t_first is None:
                t_first = ts
            requests.append(
                Request(
                    request_id=f"mooncake:{lineno - 1}",
                    arrival_time=(ts - t_first) / 1000.0,
                    prompt_len=n_in,
                    output_len=n_out,
                    prompt_token_ids=(
                        expand_block_tokens(hashes, n_in, block_size, vocab_size)
                        if expand_tokens
                        else None
                    ),
                    block_hashes=hashes,
                    block_size=block_size,
                )
            )
    return Workload(
        name=f"mooncake:{p.stem}",
        requests=requests,
        sources=[name],
        params={
            "limit": limit,
            "expand_tokens": expand_tokens,
            "vocab_size": vocab_size,
            "block_size": block_size,
        },
    )
