"""Loader for the Azure LLM inference trace 2023 (Splitwise, ISCA'24; CC-BY-4.0).

The CSV has one row per request: ``TIMESTAMP,ContextTokens,GeneratedTokens``. It gives lengths
only (no token ids, no sessions), so it drives arrival and length distributions.
"""

from __future__ import annotations

import csv
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from core.data import data_path, open_data_file
from core.workload.errors import TraceFormatError
from core.workload.schema import Request, Workload

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

# "2023-11-16 18:17:03.9799600": seven fractional digits, which datetime.fromisoformat only
# accepts from Python 3.11, so the fraction is parsed separately.
_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?$")

ZeroPolicy = Literal["clamp", "keep", "drop"]


def azure_trace_path(kind: Literal["code", "conv"] = "code") -> Path:
    """Path of the shipped Azure 2023 trace: ``kind`` is ``"code"`` or ``"conv"``."""
    if kind not in ("code", "conv"):
        raise ValueError(f"Azure trace kind must be 'code' or 'conv', got {kind!r}")
    return data_path("traces", "azure-llm-2023", f"AzureLLMInferenceTrace_{kind}.csv")


def _parse_timestamp(text: str, path: str, line: int) -> tuple[datetime, float]:
    m = _TS_RE.match(text.strip())
    if m is None:
        raise TraceFormatError(
            path, line, f"unparsable TIMESTAMP {text!r} (expected 'YYYY-MM-DD HH:MM:SS[.fff]')"
        )
    try:
        base = datetime.fromisoformat(m.group(1).replace("T", " "))
    except ValueError as e:
        raise TraceFormatError(path, line, f"unparsable TIMESTAMP {text!r}: {e}") from None
    frac = m.group(2) or ""
    return base, (int(frac) / 10 ** len(frac)) if frac else 0.0


def _parse_count(text: str, column: str, path: str, line: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceFormatError(path, line, f"{column}={text!r} is not an integer") from None
    if value < 0:
        raise TraceFormatError(path, line, f"{column}={value} is negative")
    return value


def load_azure(
    path: str | os.PathLike[str] | None = None,
    *,
    kind: Literal["code", "conv"] = "code",
    limit: int | None = None,
    zero_tokens: ZeroPolicy = "clamp",
) -> Workload:
    """Load an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    - ``path``: a CSV file; default the shipped ``kind`` trace (``"code"``: 8,819 rows,
      ``"conv"``: 19,366 rows).
    - arrival time = seconds since the first row's timestamp (timestamps must not decrease);
      ``prompt_len`` = ContextTokens, ``output_len`` = GeneratedTokens; no token ids.
    - ``limit``: keep only the first ``limit`` rows (after ``zero_tokens`` dropping).
    - ``zero_tokens``: what to do with a row whose ContextTokens or GeneratedTokens is 0 (the
      two shipped traces have none; other exports of the format may). ``"clamp"`` (the
      default) raises the 0 to 1, because a serving system always prefills at least one
      token and emits at least one (the token TTFT measures); ``"keep"`` keeps the 0 (valid
      per the schema); ``"drop"`` skips the row. The number of such rows is recorded in
      ``params["zero_token_rows"]`` whatever the policy.

    Request ids are ``"<file stem>:<line number - 2>"`` (the 0-based data row index). A
    malformed row raises :class:`~core.workload.errors.TraceFormatError` naming ``file:line``.
    """
    if zero_tokens not in ("clamp", "keep", "drop"):
        raise ValueError(f"zero_tokens must be 'clamp', 'keep' or 'drop', got {zero_tokens!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    p = Path(path) if path is not None else azure_trace_path(kind)
    name = str(p)
    requests: list[Request] = []
    zero_rows = 0
    with open_data_file(p) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(name, 1, "empty file (expected a CSV header)")
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in AZURE_COLUMNS if c not in header]
        if missing:
            raise TraceFormatError(
                name,
                1,
                f"header {header} lacks column(s) {missing} (expected {list(AZURE_COLUMNS)})",
            )
        i_ts, i_ctx, i_gen = (header.index(c) for c in AZURE_COLUMNS)
        first: tuple[datetime, float] | None = None
        prev_t = 0.0
        for row in reader:
            if limit is not None and len(requests) >= limit:
                break
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank line, e.g. a trailing newline
            if len(row) != len(header):
                raise TraceFormatError(
                    name, line, f"expected {len(header)} fields, got {len(row)}: {row!r:.80}"
                )
            base, frac = _parse_timestamp(row[i_ts], name, line)
            if first is None:
                first = (base, frac)
            t = (base - first[0]).total_seconds() + (frac - first[1])
            if t < prev_t:
                raise TraceFormatError(
                    name,
                    line,
                    f"TIMESTAMP {row[i_ts].strip()!r} is earlier than the previous row's "
                    f"(timestamps must not decrease)",
                )
            prev_t = t
            ctx = _parse_count(row[i_ctx], "ContextTokens", name, line)
            gen = _parse_count(row[i_gen], "GeneratedTokens", name, line)
            if ctx == 0 or gen == 0:
                zero_rows += 1
                if zero_tokens == "drop":
                    continue
                if zero_tokens == "clamp":
                    ctx, gen = max(ctx, 1), max(gen, 1)
            # Ids come from the line number, so they stay stable under `limit` and dropping.
            requests.append(
                Request(
                    request_id=f"{p.stem}:{line - 2}",
                    arrival_time=max(t, 0.0),
                    prompt_len=ctx,
                    output_len=gen,
                )
            )
    return Workload(
        name=f"azure:{p.stem}",
        requests=requests,
        sources=[name],
        params={"limit": limit, "zero_tokens": zero_tokens, "zero_token_rows": zero_rows},
    )
