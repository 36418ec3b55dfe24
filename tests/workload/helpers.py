"""Shared helpers for the workload tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.workload import TraceFormatError


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path/name`` (creating folders) and return the path."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_trace_error(err: pytest.ExceptionInfo, path: Path, line: int, *needles: str) -> None:
    """The error is one TraceFormatError at ``path:line`` whose message mentions ``needles``."""
    assert isinstance(err.value, TraceFormatError)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    for needle in needles:
        assert needle in message, (needle, message)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
