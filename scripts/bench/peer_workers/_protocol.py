"""The JSON-lines protocol between the engine benchmark and a worker process (stdlib only: it
runs inside each peer's own venv).

The bench writes one JSON object per line to the worker's stdin; the worker answers each with
one line on its stdout: ``{"ok": true, ...}`` or ``{"ok": false, "error", "traceback"}``.
Commands:

- ``{"cmd": "load", "model": path, "threads": n, "dtype": "fp32"|"bf16", "max_num_seqs": n,
  "max_num_batched_tokens": n, "max_model_len": n, "kv_tokens": n}`` -> ``{"load_s",
  "version", "config"}``: build the system once (the worker keeps it for later commands);
- ``{"cmd": "generate", "prompts": [[id, ...], ...], "max_tokens": [n, ...]}`` -> ``{"elapsed_s",
  "token_ids": [[id, ...], ...]}``: greedy, EOS ignored, each request its own output length,
  all requests handed to the system at once; ``elapsed_s`` times that call alone;
- ``{"cmd": "quit"}`` -> ``{}``, then the worker exits.

A worker calls :func:`serve` with its handlers. Everything else the libraries print goes to
stderr (the bench keeps it in a log), so stdout carries only the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any, Protocol

Handler = Callable[[dict[str, Any]], dict[str, Any]]
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # the bench's dtype names -> torch's


class Worker(Protocol):
    """What a worker script implements: ``load`` and ``generate`` as described above."""

    def load(self, req: dict[str, Any]) -> dict[str, Any]: ...
    def generate(self, req: dict[str, Any]) -> dict[str, Any]: ...


def check_generate(req: dict[str, Any]) -> tuple[list[list[int]], list[int]]:
    """``(prompts, max_tokens)`` of a generate request, or ValueError naming what is wrong."""
    prompts, max_tokens = req.get("prompts"), req.get("max_tokens")
    if not isinstance(prompts, list) or not isinstance(max_tokens, list):
        raise ValueError("generate needs lists 'prompts' and 'max_tokens'")
    if len(prompts) != len(max_tokens):
        raise ValueError(f"{len(prompts)} prompts but {len(max_tokens)} max_tokens")
    for i, (p, n) in enumerate(zip(prompts, max_tokens, strict=True)):
        if not p or not all(isinstance(t, int) and t >= 0 for t in p):
            raise ValueError(f"prompt #{i} is not a non-empty list of token ids")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"max_tokens #{i} is {n!r}, need an integer >= 1")
    return prompts, max_tokens


def handle(handlers: dict[str, Handler], line: str) -> tuple[dict[str, Any], bool]:
    """The reply to one request line, and whether the worker should stop after it."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or "cmd" not in req:
            raise ValueError("a request is a JSON object with a 'cmd'")
        cmd = req.pop("cmd")
        if cmd == "quit":
            return {"ok": True}, True
        if cmd not in handlers:
            raise ValueError(f"unknown command {cmd!r}; known: {', '.join(sorted(handlers))}, quit")
        return {"ok": True, **handlers[cmd](req)}, False
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the bench
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=-4),
        }, False


def serve_worker(worker: Worker) -> None:
    """Serve ``worker``'s ``load`` and ``generate`` on stdin/stdout."""
    serve({"load": worker.load, "generate": worker.generate})


def serve(handlers: dict[str, Handler], stdin: IO[str] | None = None) -> None:
    """Answer requests from stdin until ``quit`` or end of input."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # C libraries write to fd 1 too: send all of it to stderr
    sys.stdout = sys.stderr
    for line in stdin or sys.stdin:
        if not line.strip():
            continue
        reply, stop = handle(handlers, line)
        try:
            text = json.dumps(reply)
        except (TypeError, ValueError) as exc:  # a handler returned something JSON cannot hold
            text = json.dumps({"ok": False, "error": f"reply is not JSON: {exc}"})
        out.write(text + "\n")
        out.flush()
        if stop:
            break
