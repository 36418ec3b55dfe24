"""One entry point for every trace format: :func:`load_trace` detects the format by content.

The per-format loaders live in their own modules (``azure``, ``mooncake``, ``loogle``,
``toolbench``, ``jsonl``, ``sessions`` for the Marconi authors' traces) and are re-exported
here and from :mod:`core.workload`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.workload.azure import AZURE_COLUMNS, azure_trace_path, load_azure
from core.workload.errors import TraceFormatError
from core.workload.jsonl import is_header, load_jsonl, save_jsonl
from core.workload.loogle import load_loogle, loogle_path
from core.workload.mooncake import load_mooncake, mooncake_trace_path
from core.workload.schema import Workload
from core.workload.sessions import is_marconi_record, load_marconi_jsonl
from core.workload.toolbench import load_toolbench, load_toolbench_queries, toolbench_root

__all__ = [
    "azure_trace_path",
    "detect_format",
    "load_azure",
    "load_jsonl",
    "load_loogle",
    "load_marconi_jsonl",
    "load_mooncake",
    "load_toolbench",
    "load_toolbench_queries",
    "load_trace",
    "loogle_path",
    "mooncake_trace_path",
    "save_jsonl",
    "toolbench_root",
]

_MOONCAKE_KEYS = {"timestamp", "input_length", "output_length", "hash_ids"}
_LOADERS: dict[str, Callable[..., Workload]] = {
    "azure": load_azure,
    "mooncake": load_mooncake,
    "marconi": load_marconi_jsonl,
    "servelab": load_jsonl,
    "loogle": load_loogle,
    "toolbench": load_toolbench,
}


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``: ``"azure"``, ``"mooncake"``, ``"marconi"``, ``"servelab"``, ``"loogle"`` or ``"toolbench"``.

    Decided by content, not by name: a folder with ``answer/`` is ToolBench; otherwise the
    first non-blank line is read: a CSV header with ``TIMESTAMP,ContextTokens,GeneratedTokens``
    is Azure; a JSON object is our format (a ``servelab-workload`` header, or a request with
    ``request_id``), Mooncake (``timestamp, input_length, output_length, hash_ids``), the
    Marconi authors' sessions (``session_id, turn_id, ts`` and ``input_tokens`` or
    ``num_input_tokens``) or LooGLE (``input``, ``qa_pairs``). Anything else raises
    TraceFormatError at that line.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "answer").is_dir():
            return "toolbench"
        raise ValueError(f"{p}: a folder that is not a ToolBench root (no answer/ inside)")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such trace file")
    with open(p, encoding="utf-8", errors="replace") as f:
        first = next(
            ((i, t) for i, line in enumerate(f, start=1) if (t := line.strip().lstrip("\ufeff"))),
            None,
        )
    if first is None:
        raise TraceFormatError(p, 1, "empty file: cannot tell its trace format")
    lineno, text = first
    if text.startswith("{"):
        try:
            obj: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceFormatError(
                p, lineno, f"invalid JSON: {e.msg} at column {e.colno}"
            ) from None
        if isinstance(obj, dict):
            if is_header(obj) or "request_id" in obj:
                return "servelab"
            if _MOONCAKE_KEYS <= obj.keys():
                return "mooncake"
            if is_marconi_record(obj):
                return "marconi"
            if {"input", "qa_pairs"} <= obj.keys():
                return "loogle"
            raise TraceFormatError(
                p, lineno, f"unrecognised JSON trace record with keys {sorted(obj)[:8]}"
            )
    columns = {c.strip() for c in text.split(",")}
    if set(AZURE_COLUMNS) <= columns:
        return "azure"
    raise TraceFormatError(
        p,
        lineno,
        "unrecognised trace format (expected an Azure CSV, Mooncake JSONL, Marconi JSONL, "
        "LooGLE JSONL, a servelab workload JSONL or a ToolBench folder); first line starts "
        f"{text[:60]!r}",
    )


def load_trace(path: str | os.PathLike[str], **kwargs: Any) -> Workload:
    """Load any supported trace, detecting its format with :func:`detect_format`.

    ``kwargs`` go to the format's loader (e.g. ``limit=`` for Azure, Mooncake, Marconi and our
    JSONL);
    our own format comes back exactly as :func:`save_jsonl` wrote it.
    """
    return _LOADERS[detect_format(path)](path, **kwargs)
