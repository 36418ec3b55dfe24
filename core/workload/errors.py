"""Errors for malformed traces, and the field checks every loader shares.

A malformed record stops the load with one :class:`TraceFormatError` whose message starts
with ``file:line: `` and says what is wrong. Whole-document JSON files (ToolBench) have no
record per line, so their errors name the line where the offending JSON object starts.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
import os
from collections.abc import Sequence
from typing import Any


class TraceFormatError(ValueError):
    """A trace file is malformed; ``str(err)`` is ``"<path>:<line>: <what is wrong>"``."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{self.path}:{line}: {message}")


def require(record: dict[str, Any], key: str, kind: str, where: tuple[str, int]) -> Any:
    """``record[key]`` checked to be of ``kind``; raise TraceFormatError at ``where`` if not.

    Kinds: ``"int"`` (not bool), ``"nonneg_int"``, ``"number"`` (finite int/float, not bool),
    ``"nonneg_number"``, ``"str"``, ``"list"``, ``"dict"``, ``"int_list"`` (list of ints).
    """
    if key not in record:
        raise TraceFormatError(*where, f"missing field {key!r}")
    return check_value(record[key], kind, key, where)


_KIND_TEXT = {
    "int": "an integer",
    "nonneg_int": "a non-negative integer",
    "number": "a finite number",
    "nonneg_number": "a finite non-negative number",
    "str": "a string",
    "list": "a list",
    "dict": "an object",
    "int_list": "a list of integers",
}


def check_value(value: Any, kind: str, name: str, where: tuple[str, int]) -> Any:
    """``value`` if it is of ``kind`` (see :func:`require`), else TraceFormatError at ``where``."""
    ok: bool
    if kind in ("int", "nonneg_int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and kind == "nonneg_int" and value < 0:
            raise TraceFormatError(*where, f"{name}={value} is negative")
    elif kind in ("number", "nonneg_number"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
        if ok and kind == "nonneg_number" and value < 0:
            raise TraceFormatError(*where, f"{name}={value} is negative")
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "list":
        ok = isinstance(value, list)
    elif kind == "dict":
        ok = isinstance(value, dict)
    elif kind == "int_list":
        ok = isinstance(value, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        )
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    if not ok:
        raise TraceFormatError(*where, f"{name} must be {_KIND_TEXT[kind]}, got {value!r:.80}")
    return value


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def parse_json_line(text: str, path: str, line: int) -> dict[str, Any]:
    """One JSONL line as a JSON object, or TraceFormatError at ``path:line``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(path, line, f"invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def load_json_document(path: str, text: str) -> Any:
    """A whole JSON file, or TraceFormatError at the line of the syntax error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(
            path, e.lineno, f"invalid JSON: {e.msg} at column {e.colno}"
        ) from None


def json_object_line(text: str, json_path: Sequence[str | int]) -> int:
    """Line (1-based) where the innermost JSON object on ``json_path`` starts in ``text``.

    Used only on the error path: it re-parses with the pure-Python scanner to learn where
    each object starts, then walks ``json_path`` (keys and list indices) as far as it can.
    """
    starts: dict[int, int] = {}
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args, **kwargs):  # noqa: ANN001 - json's internal signature
        obj, end = json.decoder.JSONObject(s_and_end, *args, **kwargs)
        starts[id(obj)] = s_and_end[1] - 1  # the scanner passes the index after "{"
        return obj, end

    # typeshed declares neither hook (both exist: json.decoder and json.scanner set them)
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    node = decoder.decode(text)
    pos = starts.get(id(node), 0)
    for key in json_path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        pos = starts.get(id(node), pos)
    return text.count("\n", 0, pos) + 1
