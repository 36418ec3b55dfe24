"""Session traces: the Marconi authors' JSONL format and a summary of any session workload.

A session is a list of requests (turns) sharing a ``session_id``; turn k's prompt usually
repeats turn k-1's prompt and response at its front, which is what a prefix cache reuses.

- :func:`load_marconi_jsonl` / :func:`save_marconi_jsonl`: the trace format of the Marconi
  authors' ``utils/generate_trace.py`` (``session_id, turn_id, ts`` and token ids or counts);
  :func:`is_marconi_record` lets :func:`core.workload.detect_format` recognise it.
- :func:`session_stats`: turns, lengths, think times and prefix reuse of any workload;
  :func:`common_prefix_len`: how many leading tokens two sequences share.

The generators of Marconi's LMSys-, ShareGPT- and SWE-bench-like sessions are its artifact's
(``artifacts/marconi/sessions.py``).

Mooncake
--------
The Mooncake trace (``load_mooncake``) has no sessions: each line is an independent request,
and reuse comes from shared ``hash_ids`` (equal 512-token blocks, expanded to equal token ids
by ``expand_tokens=True``), so a prefix-cache replay sees cross-request reuse without a
session structure; :func:`session_stats` reports each request as its own session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.data import open_data_file
from core.workload.errors import TraceFormatError, check_value, parse_json_line
from core.workload.schema import Request, Workload

__all__ = [
    "common_prefix_len",
    "is_marconi_record",
    "load_marconi_jsonl",
    "save_marconi_jsonl",
    "session_stats",
]


# --------------------------------------------------------------------------- the authors' format

_MARCONI_REQUIRED = ("session_id", "turn_id", "ts")


def is_marconi_record(obj: dict[str, Any]) -> bool:
    """Whether a parsed JSON line looks like one request of the Marconi authors' traces."""
    return all(k in obj for k in _MARCONI_REQUIRED) and (
        "input_tokens" in obj or "num_input_tokens" in obj
    )


def _tokens_and_len(
    rec: dict[str, Any], ids_key: str, len_key: str, where: tuple[str, int]
) -> tuple[list[int] | None, int]:
    ids = rec.get(ids_key)
    n = rec.get(len_key)
    if ids is not None:
        check_value(ids, "int_list", ids_key, where)
        if any(x < 0 for x in ids):
            raise TraceFormatError(*where, f"{ids_key} contains a negative token id")
    if n is not None:
        check_value(n, "nonneg_int", len_key, where)
    if ids is not None and n is not None and len(ids) != n:
        raise TraceFormatError(*where, f"{len_key}={n} but {ids_key} has {len(ids)} ids")
    if ids is not None:
        return ids, len(ids)
    if n is None:
        raise TraceFormatError(*where, f"needs {ids_key!r} or {len_key!r}")
    return None, n


def load_marconi_jsonl(path: str | os.PathLike[str], *, limit: int | None = None) -> Workload:
    """Load a trace in the Marconi authors' JSONL schema (``utils/generate_trace.py``).

    One request per line::

        {"session_id": 3, "turn_id": 2, "ts": 12.7, "num_input_tokens": 812,
         "num_output_tokens": 95, "input_tokens": [...], "output_tokens": [...]}

    - ``session_id`` (int or string), ``turn_id`` (int >= 0) and ``ts`` (seconds, >= 0) are
      required; ``input_tokens`` (full prompt: history + new input) or ``num_input_tokens``,
      and ``output_tokens`` or ``num_output_tokens``, at least one of each (both must agree).
      Other fields are ignored (replay tools add their own).
    - arrival_time = ``ts`` unchanged (the authors' traces start at 0);
      ``think_time_s`` of turn k = its ``ts`` minus turn k-1's (0 for a session's first line).
    - request id ``"marconi:s<session_id>:t<turn_id>"``, ``session_id="marconi:s<session_id>"``;
      the file's own id is kept in ``metadata["marconi_session_id"]``.
    - ``limit`` keeps the first ``limit`` requests. Blank lines are skipped.

    A malformed line, a repeated (session, turn) or a turn earlier than the session's previous
    turn raises :class:`~core.workload.errors.TraceFormatError` naming ``file:line``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    p = Path(path)
    name = str(p)
    requests: list[Request] = []
    seen: dict[tuple[Any, int], int] = {}
    with open_data_file(p) as f:
        for lineno, text in enumerate(f, start=1):
            if limit is not None and len(requests) >= limit:
                break
            if not text.strip():
                continue
            where = (name, lineno)
            rec = parse_json_line(text, *where)
            missing = [k for k in _MARCONI_REQUIRED if k not in rec]
            if missing:
                raise TraceFormatError(*where, f"missing field(s) {missing} of a Marconi trace")
            sid = rec["session_id"]
            if isinstance(sid, bool) or not isinstance(sid, (int, str)):
                raise TraceFormatError(*where, f"session_id must be an int or string, got {sid!r}")
            turn = check_value(rec["turn_id"], "nonneg_int", "turn_id", where)
            ts = float(check_value(rec["ts"], "nonneg_number", "ts", where))
            prompt, n_in = _tokens_and_len(rec, "input_tokens", "num_input_tokens", where)
            output, n_out = _tokens_and_len(rec, "output_tokens", "num_output_tokens", where)
            if (sid, turn) in seen:
                raise TraceFormatError(
                    *where,
                    f"session {sid!r} turn {turn} repeats line {seen[(sid, turn)]}",
                )
            seen[(sid, turn)] = lineno
            requests.append(
                Request(
                    request_id=f"marconi:s{sid}:t{turn}",
                    arrival_time=ts,
                    prompt_len=n_in,
                    output_len=n_out,
                    prompt_token_ids=prompt,
                    output_token_ids=output,
                    session_id=f"marconi:s{sid}",
                    turn=turn,
                    metadata={"marconi_session_id": sid, "line": lineno},
                )
            )
    # Think times need each session's turns in order, which the file need not list together.
    by_session: dict[str, list[Request]] = {}
    for r in requests:
        by_session.setdefault(r.session_id or "", []).append(r)
    for turns in by_session.values():
        turns.sort(key=lambda r: r.turn)
        for prev, cur in zip(turns, turns[1:], strict=False):
            gap = cur.arrival_time - prev.arrival_time
            if gap < 0:
                raise TraceFormatError(
                    name,
                    cur.metadata["line"],
                    f"turn {cur.turn} of session {cur.metadata['marconi_session_id']!r} has "
                    f"ts={cur.arrival_time}, earlier than turn {prev.turn}'s ts="
                    f"{prev.arrival_time} (line {prev.metadata['line']})",
                )
            cur.think_time_s = gap
    return Workload(
        name=f"marconi:{p.stem}", requests=requests, sources=[name], params={"limit": limit}
    )


def save_marconi_jsonl(workload: Workload, path: str | os.PathLike[str]) -> Path:
    """Write ``workload`` in the Marconi authors' JSONL schema and return the path.

    Sessions are numbered 0, 1, ... in order of their first request; a request without a
    session is its own session. Token ids are written when the request has them, lengths
    always. Requests go out in arrival order. The file is written to a temporary name and
    renamed, so an existing file is never left half-written.
    """
    out = Path(path)
    number: dict[str, int] = {}
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in workload.requests:
                key = r.session_id or f"request:{r.request_id}"
                sid = number.setdefault(key, len(number))
                rec: dict[str, Any] = {
                    "session_id": sid,
                    "turn_id": r.turn,
                    "ts": float(r.arrival_time),
                    "num_input_tokens": r.prompt_len,
                    "num_output_tokens": r.output_len,
                }
                if r.prompt_token_ids is not None:
                    rec["input_tokens"] = r.prompt_token_ids
                if r.output_token_ids is not None:
                    rec["output_tokens"] = r.output_token_ids
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- summary


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading elements ``a`` and ``b`` share."""
    # Slice comparisons run in C and generated turns share their int objects, so whole chunks
    # compare fast; only the chunk holding the first difference is searched element-wise.
    n = min(len(a), len(b))
    step = 1024
    for i in range(0, n, step):
        j = min(n, i + step)
        if a[i:j] != b[i:j]:
            return i + next(
                k for k, (x, y) in enumerate(zip(a[i:j], b[i:j], strict=True)) if x != y
            )
    return n


def _reused_tokens(prev: Request, cur: Request) -> int | None:
    """Prompt tokens of ``cur`` that begin like ``prev``'s prompt + response, or None."""
    if prev.prompt_token_ids is not None and cur.prompt_token_ids is not None:
        before = prev.prompt_token_ids + (prev.output_token_ids or [])
        return common_prefix_len(before, cur.prompt_token_ids)
    if (
        prev.block_hashes is not None
        and cur.block_hashes is not None
        and prev.block_size == cur.block_size
    ):
        blocks = common_prefix_len(prev.block_hashes, cur.block_hashes)
        return min(blocks * (cur.block_size or 0), cur.prompt_len, prev.prompt_len)
    return None


def _total_reused(sessions: dict[str, list[Request]]) -> int | None:
    """Prompt tokens that each session's turns reuse from the turn before, summed; None when
    one pair's reuse is unknown (see :func:`_reused_tokens`)."""
    total = 0
    for reqs in sessions.values():
        for prev, cur in zip(reqs, reqs[1:], strict=False):
            n = _reused_tokens(prev, cur)
            if n is None:
                return None
            total += n
    return total


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else 0.0


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def session_stats(workload: Workload) -> dict[str, Any]:
    """What a session workload looks like, as plain numbers (JSON-ready).

    Keys: ``requests``, ``sessions``, ``turns_mean`` / ``turns_p50`` / ``turns_max`` (requests
    per session), ``prompt_len_mean`` / ``_p50`` / ``_p99`` / ``_max``, ``output_len_mean``,
    ``think_time_mean_s`` (over turns after a session's first), ``duration_s``, and
    ``prefix_reuse`` = (prompt tokens that repeat the start of the session's previous turn's
    prompt + response) / (all prompt tokens), from token ids (or block hashes when a trace has
    only those; None when it has neither). A request without a session is its own session.
    """
    sessions = workload.sessions()
    turns = np.array([len(v) for v in sessions.values()], dtype=float)
    prompt = np.array([r.prompt_len for r in workload], dtype=float)
    output = np.array([r.output_len for r in workload], dtype=float)
    thinks = np.array([r.think_time_s for v in sessions.values() for r in v[1:]], dtype=float)
    reused = _total_reused(sessions)
    total = float(prompt.sum())
    return {
        "requests": len(workload),
        "sessions": len(sessions),
        "turns_mean": _mean(turns),
        "turns_p50": _pct(turns, 50),
        "turns_max": int(turns.max()) if len(turns) else 0,
        "prompt_len_mean": _mean(prompt),
        "prompt_len_p50": _pct(prompt, 50),
        "prompt_len_p99": _pct(prompt, 99),
        "prompt_len_max": int(prompt.max()) if len(prompt) else 0,
        "output_len_mean": _mean(output),
        "think_time_mean_s": _mean(thinks),
        "duration_s": workload.duration,
        "prefix_reuse": (reused / total if total else 0.0) if reused is not None else None,
    }
