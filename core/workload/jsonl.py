"""Servelab's own workload file: JSON Lines that round-trip a :class:`Workload` exactly.

This is the format artifacts accept with ``--trace``. Layout::

    {"format": "servelab-workload", "version": 1, "name": ..., "sources": [...], "params": {...}}
    {"request_id": "r0", "arrival_time": 0.0, "prompt_len": 3, "output_len": 2, ...}
    ...

The header line is optional when hand-writing a file (the name then defaults to the file's
stem). Each later line is one :class:`~core.workload.schema.Request`: ``request_id``,
``arrival_time``, ``prompt_len`` and ``output_len`` are required; ``prompt_token_ids``,
``block_hashes`` + ``block_size``, ``session_id``, ``turn``, ``think_time_s``,
``output_token_ids``, ``interceptions`` (objects with ``after_output_tokens``,
``duration_s``, ``returned_tokens`` and optionally ``kind``, ``returned_token_ids``) and
``metadata`` are optional; unknown fields are errors (they are usually typos). Blank lines are
skipped. Lines need not be in arrival order: the workload sorts on load.

``metadata`` and ``params`` must hold JSON values; a tuple is written as a list and reads back
as a list. Floats are written with ``repr`` precision, so they read back bit-identical.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.data import open_data_file
from core.workload.errors import TraceFormatError, check_value, parse_json_line, require
from core.workload.schema import Interception, Request, Workload

FORMAT = "servelab-workload"
VERSION = 1

_REQUIRED = {
    "request_id": "str",
    "arrival_time": "nonneg_number",
    "prompt_len": "nonneg_int",
    "output_len": "nonneg_int",
}
_OPTIONAL = {
    "prompt_token_ids": "int_list",
    "block_hashes": "int_list",
    "block_size": "int",
    "session_id": "str",
    "turn": "nonneg_int",
    "think_time_s": "nonneg_number",
    "output_token_ids": "int_list",
    "interceptions": "list",
    "metadata": "dict",
}
_ICP_REQUIRED = {
    "after_output_tokens": "nonneg_int",
    "duration_s": "nonneg_number",
    "returned_tokens": "nonneg_int",
}
_ICP_OPTIONAL = {"kind": "str", "returned_token_ids": "int_list"}
_DEFAULTS = {f.name: f.default for f in fields(Request) if f.name in _OPTIONAL}


def request_to_json(r: Request) -> dict[str, Any]:
    """A request as a JSON object, leaving out optional fields that hold their defaults."""
    d: dict[str, Any] = {
        "request_id": r.request_id,
        "arrival_time": float(r.arrival_time),
        "prompt_len": r.prompt_len,
        "output_len": r.output_len,
    }
    for name in _OPTIONAL:
        value = getattr(r, name)
        if name == "interceptions":
            if value:
                d[name] = [_interception_to_json(i) for i in value]
        elif name == "metadata":
            if value:
                d[name] = value
        elif value is not None and value != _DEFAULTS.get(name):
            d[name] = float(value) if name == "think_time_s" else value
    return d


def _interception_to_json(icp: Interception) -> dict[str, Any]:
    d: dict[str, Any] = {
        "after_output_tokens": icp.after_output_tokens,
        "duration_s": float(icp.duration_s),
        "returned_tokens": icp.returned_tokens,
        "kind": icp.kind,
    }
    if icp.returned_token_ids is not None:
        d["returned_token_ids"] = list(icp.returned_token_ids)
    return d


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serializable: {e}") from None


def save_jsonl(workload: Workload, path: str | os.PathLike[str]) -> Path:
    """Write ``workload`` to ``path`` (header + one request per line) and return the path.

    The file is written to a temporary name and renamed, so an existing file is never left
    half-written.
    """
    out = Path(path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "name": workload.name,
        "sources": list(workload.sources),
        "params": workload.params,
    }
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_dumps(header, f"workload {workload.name!r} header") + "\n")
            for r in workload.requests:
                f.write(_dumps(request_to_json(r), f"request {r.request_id!r}") + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _interception_from_json(obj: Any, i: int, where: tuple[str, int]) -> Interception:
    name = f"interceptions[{i}]"
    if not isinstance(obj, dict):
        raise TraceFormatError(*where, f"{name} must be an object")
    unknown = set(obj) - set(_ICP_REQUIRED) - set(_ICP_OPTIONAL)
    if unknown:
        raise TraceFormatError(*where, f"{name} has unknown field(s) {sorted(unknown)}")
    kw: dict[str, Any] = {}
    for key, kind in _ICP_REQUIRED.items():
        if key not in obj:
            raise TraceFormatError(*where, f"{name} is missing {key!r}")
        kw[key] = check_value(obj[key], kind, f"{name}.{key}", where)
    for key, kind in _ICP_OPTIONAL.items():
        if obj.get(key) is not None:
            kw[key] = check_value(obj[key], kind, f"{name}.{key}", where)
    kw["duration_s"] = float(kw["duration_s"])
    if "returned_token_ids" in kw:
        kw["returned_token_ids"] = tuple(kw["returned_token_ids"])
    try:
        return Interception(**kw)
    except ValueError as e:
        raise TraceFormatError(*where, str(e)) from None


def request_from_json(obj: dict[str, Any], where: tuple[str, int]) -> Request:
    """A request from one parsed line; any problem is a TraceFormatError at ``where``."""
    unknown = set(obj) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise TraceFormatError(*where, f"unknown field(s) {sorted(unknown)}")
    kw: dict[str, Any] = {key: require(obj, key, kind, where) for key, kind in _REQUIRED.items()}
    for key, kind in _OPTIONAL.items():
        if obj.get(key) is not None:
            kw[key] = check_value(obj[key], kind, key, where)
    kw["arrival_time"] = float(kw["arrival_time"])
    if "think_time_s" in kw:
        kw["think_time_s"] = float(kw["think_time_s"])
    if "interceptions" in kw:
        kw["interceptions"] = [
            _interception_from_json(x, i, where) for i, x in enumerate(kw["interceptions"])
        ]
    try:
        return Request(**kw)
    except ValueError as e:
        raise TraceFormatError(*where, str(e)) from None


def is_header(obj: dict[str, Any]) -> bool:
    """Whether a parsed first line is this format's header."""
    return obj.get("format") == FORMAT


def load_jsonl(path: str | os.PathLike[str], *, limit: int | None = None) -> Workload:
    """Read a workload written by :func:`save_jsonl` (or hand-written in the same format).

    ``limit`` keeps the first ``limit`` request lines. A malformed line raises
    :class:`~core.workload.errors.TraceFormatError` naming ``file:line``; so does a duplicate
    request id (naming the line of the second occurrence).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    p = Path(path)
    name_ = str(p)
    header: dict[str, Any] | None = None
    requests: list[Request] = []
    seen: dict[str, int] = {}
    first = True
    with open_data_file(p) as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = (name_, lineno)
            obj = parse_json_line(text, *where)
            if first:
                first = False
                if "format" in obj:
                    if not is_header(obj):
                        raise TraceFormatError(
                            *where, f"format {obj['format']!r} is not {FORMAT!r}"
                        )
                    version = obj.get("version")
                    if version != VERSION:
                        raise TraceFormatError(
                            *where,
                            f"unsupported {FORMAT} version {version!r} (this reads {VERSION})",
                        )
                    header = obj
                    for key, kind in (("name", "str"), ("sources", "list"), ("params", "dict")):
                        if key in obj:
                            check_value(obj[key], kind, key, where)
                    continue
            if limit is not None and len(requests) >= limit:
                break
            r = request_from_json(obj, where)
            if r.request_id in seen:
                raise TraceFormatError(
                    *where,
                    f"duplicate request_id {r.request_id!r} (first on line {seen[r.request_id]})",
                )
            seen[r.request_id] = lineno
            requests.append(r)
    header = header or {}
    return Workload(
        name=header.get("name", p.stem),
        requests=requests,
        sources=list(header.get("sources", [])) if header else [name_],
        params=dict(header.get("params", {})),
    )
