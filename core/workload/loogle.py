"""Loader for LooGLE (Li et al., ACL'24; MIT): long documents, many questions each.

Each JSONL line is one document: ``input`` (54k-127k characters), ``title``, ``qa_pairs``
and ``output``. ``qa_pairs`` is a *Python-literal string* (single-quoted dicts), parsed with
:func:`ast.literal_eval` (never ``eval``); each pair has ``Q``, ``A``, ``S`` (evidence) and,
in the long-dependency file, ``type``.

Every question becomes one request whose prompt is the document's tokens followed by the
question's tokens, so all questions on a document share a long prefix (Preble's workload).
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from core.data import data_path, open_data_file
from core.workload.errors import TraceFormatError, check_value, parse_json_line, require
from core.workload.schema import Request, Workload
from core.workload.tokenize import HashTokenizer, Tokenizer

LOOGLE_TASKS = ("longdep", "shortdep")


def loogle_path(task: Literal["longdep", "shortdep"] = "longdep") -> Path:
    """Path of a shipped LooGLE file: ``task`` is ``"longdep"`` or ``"shortdep"``."""
    if task not in LOOGLE_TASKS:
        raise ValueError(f"LooGLE task must be one of {LOOGLE_TASKS}, got {task!r}")
    return data_path("traces", "loogle", f"{task}_qa.jsonl")


def _parse_qa_pairs(raw: Any, where: tuple[str, int]) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise TraceFormatError(
                *where, f"qa_pairs is not a valid Python literal: {type(e).__name__}: {e}"
            ) from None
    if not isinstance(raw, list):
        raise TraceFormatError(*where, f"qa_pairs must be a list, got {type(raw).__name__}")
    for i, qa in enumerate(raw):
        if not isinstance(qa, dict):
            raise TraceFormatError(*where, f"qa_pairs[{i}] must be a dict, got {type(qa).__name__}")
        for key in ("Q", "A"):
            if key not in qa:
                raise TraceFormatError(*where, f"qa_pairs[{i}] has no {key!r}")
            check_value(qa[key], "str", f"qa_pairs[{i}][{key!r}]", where)
        if qa.get("type") is not None:
            check_value(qa["type"], "str", f"qa_pairs[{i}]['type']", where)
    return raw


def document_id(text: str) -> str:
    """A stable id for a document's text, so one document in two files is one session."""
    return "loogle:" + hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()


def load_loogle(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    task: Literal["longdep", "shortdep", "both"] = "longdep",
    max_documents: int | None = None,
    max_prompt_len: int | None = None,
    output_len: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> Workload:
    """Load LooGLE question-answering files as one request per question.

    - ``path``: one file or several; default the shipped file(s) of ``task``
      (``"longdep"``: 5 documents, 43 questions; ``"shortdep"``: 5 documents, 80 questions;
      ``"both"``: both files, 9 distinct documents, 123 questions).
    - prompt = ``tokenizer.encode(document)`` + ``tokenizer.encode("Question: ... Answer:")``
      (default :class:`~core.workload.tokenize.HashTokenizer`), so questions on one document
      share the document's tokens as a prefix.
    - ``max_prompt_len``: cut the *document* part so the prompt fits (the question is kept
      whole unless it alone is longer, in which case the prompt is the question's first
      ``max_prompt_len`` tokens).
    - ``output_len``: a fixed output length; default the answer's token count (at least 1),
      with the answer's tokens as ``output_token_ids``.
    - ``session_id`` names the document by a hash of its text; ``turn`` numbers its questions
      in file order. The questions are independent (a prompt does not contain earlier
      answers) and all arrive at time 0, so assign arrivals per request, e.g.
      ``assign_arrivals(w, PoissonProcess(rate), by="request")``.
    - ``max_documents``: keep the questions of the first ``max_documents`` distinct
      documents, in file order.
    - metadata: ``title``, ``task`` (``"longdep"``/``"shortdep"``), ``question_type``
      (LooGLE's category in the longdep file, else None), ``question_index``,
      ``document_tokens`` (tokens of the document part after any cut).
    """
    if task not in (*LOOGLE_TASKS, "both"):
        raise ValueError(f"task must be 'longdep', 'shortdep' or 'both', got {task!r}")
    if max_prompt_len is not None and max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    if output_len is not None and output_len < 0:
        raise ValueError(f"output_len must be >= 0, got {output_len}")
    if max_documents is not None and max_documents < 0:
        raise ValueError(f"max_documents must be >= 0, got {max_documents}")
    if path is None:
        tasks = LOOGLE_TASKS if task == "both" else (task,)
        paths = [loogle_path(t) for t in tasks]  # type: ignore[arg-type]
    elif isinstance(path, (str, os.PathLike)):
        paths = [Path(path)]
    else:
        paths = [Path(p) for p in path]
    tok = tokenizer if tokenizer is not None else HashTokenizer()

    requests: list[Request] = []
    turns: dict[str, int] = {}  # document id -> next turn number
    for p in paths:
        name = str(p)
        file_task = p.name.split("_")[0] if p.name.split("_")[0] in LOOGLE_TASKS else p.stem
        with open_data_file(p) as f:
            for lineno, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = (name, lineno)
                rec = parse_json_line(text, *where)
                doc = require(rec, "input", "str", where)
                title = require(rec, "title", "str", where)
                if "qa_pairs" not in rec:
                    raise TraceFormatError(*where, "missing field 'qa_pairs'")
                qa_pairs = _parse_qa_pairs(rec["qa_pairs"], where)
                sid = document_id(doc)
                if sid not in turns:
                    if max_documents is not None and len(turns) >= max_documents:
                        continue
                    turns[sid] = 0
                doc_ids = tok.encode(doc)
                for qi, qa in enumerate(qa_pairs):
                    q_ids = tok.encode(f"Question: {qa['Q']} Answer:")
                    if max_prompt_len is None:
                        doc_part = doc_ids
                    else:
                        doc_part = doc_ids[: max(0, max_prompt_len - len(q_ids))]
                    prompt = doc_part + q_ids
                    if max_prompt_len is not None:
                        prompt = prompt[:max_prompt_len]
                    if output_len is None:
                        answer = tok.encode(qa["A"])
                        out_ids: list[int] | None = answer if answer else None
                        n_out = max(1, len(answer))
                    else:
                        out_ids, n_out = None, output_len
                    requests.append(
                        Request(
                            request_id=f"loogle:{file_task}:{lineno - 1}:{qi}",
                            arrival_time=0.0,
                            prompt_len=len(prompt),
                            output_len=n_out,
                            prompt_token_ids=prompt,
                            output_token_ids=out_ids,
                            session_id=sid,
                            turn=turns[sid],
                            metadata={
                                "title": title,
                                "task": file_task,
                                "question_type": qa.get("type"),
                                "question_index": qi,
                                "document_tokens": len(doc_part),
                            },
                        )
                    )
                    turns[sid] += 1
    return Workload(
        name=f"loogle:{task if path is None else '+'.join(p.stem for p in paths)}",
        requests=requests,
        sources=[str(p) for p in paths],
        params={
            "task": task,
            "max_documents": max_documents,
            "max_prompt_len": max_prompt_len,
            "output_len": output_len,
            "tokenizer": repr(tok),
        },
    )
