"""Loaders for ToolBench (ToolLLM, Qin et al., ICLR'24; Apache-2.0) tool-use data.

``answer/G*_answer/*.json`` holds one DFS search per query. Its
``answer_generation.train_messages`` is a list of message lists, one per LLM call on the final
path: each ends with the assistant message that call produced. The last list is the whole
final path (``system, user, assistant, function, assistant, ...``), including "this is not the
first time you try" user messages that DFS inserted before a retry. ``answer_generation.function``
lists the callable functions (OpenAI function-calling schema, plus ``Finish``).

Representation (one, used throughout): **a trajectory is a session; every assistant message
(one LLM call) is a turn**. Turn k's prompt is the shared tool prompt (system message, then the
function list) followed by the conversation so far, ending with the assistant header; its
output is the assistant message (thought and function call). The function result (and any
DFS user message) becomes the **appended tokens of turn k+1's prompt**, so turn k+1's prompt
starts with turn k's prompt + output. The call's duration is turn k+1's ``think_time_s``.
Turn metadata names the function called, its tool and how many tokens the tool returned, so
InferCept-style interception segments are explicit; :func:`core.workload.sessions_to_interceptions`
folds each session into one request with :class:`~core.workload.schema.Interception` objects.

Simplification: the final path is replayed append-only. Where an intermediate call saw a DFS
retry message that the final path later dropped, that call's prompt differs slightly from the
one ChatGPT saw (the retry messages are a few hundred tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data import data_path, open_data_file
from core.workload.errors import TraceFormatError, json_object_line, load_json_document
from core.workload.schema import Request, Workload
from core.workload.tokenize import HashTokenizer, Tokenizer

TOOLBENCH_GROUPS = ("G1", "G2", "G3")
_ROLES = ("system", "user", "assistant", "function")
_TOOL_RE = re.compile(r'subfunction for tool "([^"]+)"')


def toolbench_root() -> Path:
    """The shipped ToolBench folder (``answer/`` and ``instruction/``)."""
    return data_path("traces", "toolbench")


def _answer_files(root: Path, groups: Sequence[str]) -> list[tuple[str, Path]]:
    out = []
    for g in groups:
        folder = root / "answer" / f"{g}_answer"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no ToolBench answer folder for group {g!r}")

        def key(p: Path) -> tuple[int, str]:
            head = p.stem.split("_")[0]
            return (int(head) if head.isdigit() else -1, p.stem)

        out += [(g, p) for p in sorted(folder.glob("*.json"), key=key)]
    return out


def tool_of_function(name: str, functions: dict[str, dict[str, Any]]) -> str:
    """The RapidAPI tool a function belongs to.

    From the function's description (``'This is the subfunction for tool "X"'``) when the
    function is listed; else ToolBench's naming rule ``<api>_for_<tool>``; else the name
    itself (ChatGPT sometimes calls a tool by its own name, which is not a listed function).
    """
    if name == "Finish":
        return "Finish"
    desc = functions.get(name, {}).get("description")
    if isinstance(desc, str) and (m := _TOOL_RE.search(desc)):
        return m.group(1)
    return name.rsplit("_for_", 1)[1] if "_for_" in name else name


class _Doc:
    """A parsed JSON document that reports structural errors at the right line."""

    def __init__(self, path: Path):
        self.path = str(path)
        with open_data_file(path) as f:
            self.text = f.read()
        self.data = load_json_document(self.path, self.text)

    def fail(self, json_path: Sequence[str | int], message: str) -> TraceFormatError:
        where = "".join(f"[{k!r}]" if isinstance(k, str) else f"[{k}]" for k in json_path)
        line = json_object_line(self.text, json_path)
        return TraceFormatError(self.path, line, f"{where or 'document'}: {message}")


def _assistant_text(msg: dict[str, Any]) -> str:
    parts = []
    if msg.get("content"):
        parts.append(f"Thought: {msg['content']}")
    call = msg.get("function_call")
    if call:
        parts.append(f"Action: {call['name']}\nAction Input: {call.get('arguments', '')}")
    return "\n".join(parts)


def _check_messages(doc: _Doc, messages: Any, base: list[str | int]) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise doc.fail(base, "must be a non-empty list of messages")
    for i, m in enumerate(messages):
        here = [*base, i]
        if not isinstance(m, dict):
            raise doc.fail(here, f"message must be an object, got {type(m).__name__}")
        if m.get("role") not in _ROLES:
            raise doc.fail(here, f"role must be one of {_ROLES}, got {m.get('role')!r}")
        if m.get("content") is not None and not isinstance(m["content"], str):
            raise doc.fail(here, f"content must be a string or null, got {m['content']!r:.60}")
        if m["role"] == "assistant" and m.get("function_call") is not None:
            call = m["function_call"]
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise doc.fail(
                    here, f"function_call must be an object with a name, got {call!r:.80}"
                )
            if not isinstance(call.get("arguments", ""), str):
                raise doc.fail(here, "function_call arguments must be a string")
        if m["role"] == "function" and not isinstance(m.get("name"), str):
            raise doc.fail(here, "function message has no string 'name'")
    if messages[0]["role"] != "system":
        raise doc.fail(
            [*base, 0], f"first message must be the system prompt, got {messages[0]['role']!r}"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise doc.fail(base, "no assistant message")
    return messages


def load_toolbench(
    root: str | os.PathLike[str] | None = None,
    *,
    groups: Sequence[str] = TOOLBENCH_GROUPS,
    tool_duration_s: float = 1.0,
    max_trajectories: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> Workload:
    """Load ToolBench answer trajectories as multi-turn agent sessions (see module docstring).

    - ``root``: a folder with ``answer/<group>_answer/*.json``; default the shipped one
      (15 trajectories, 13 usable: 2 are ``valid_data: false`` and have no messages; skipped
      files are listed in ``params["skipped"]``). Files load in group, then numeric order.
    - ``tool_duration_s``: seconds each function call takes (ToolBench records no timing),
      added to the next turn's ``think_time_s``; turn arrival times within a session are the
      cumulative think times from 0 (reassign with ``assign_arrivals(..., by="session")``).
    - ``max_trajectories``: keep the first N usable trajectories.
    - ``session_id`` = ``"toolbench:<group>:<file number>"``; request id = ``"<session>:<turn>"``.
    - metadata per turn: ``group``, ``query``, ``function`` (called in this turn's output, or
      None), ``tool`` (its tool, ``"Finish"`` for the final answer), ``tools`` (all tools in the
      prompt, sorted), ``tool_prompt_id`` and ``tool_prompt_tokens`` (hash and length of the
      system + function-list prefix that every turn of every trajectory with the same
      functions shares), ``returned_function`` / ``returned_tokens`` (the function result
      appended since the previous turn, 0 on turn 0), ``appended_tokens`` (all tokens added
      since the previous turn's output), ``finish_type``.
    """
    if not (tool_duration_s >= 0):
        raise ValueError(f"tool_duration_s must be >= 0, got {tool_duration_s}")
    base = Path(root) if root is not None else toolbench_root()
    tok = tokenizer if tokenizer is not None else HashTokenizer()
    requests: list[Request] = []
    sources: list[str] = []
    skipped: list[str] = []
    n_used = 0
    for group, path in _answer_files(base, groups):
        if max_trajectories is not None and n_used >= max_trajectories:
            break
        sources.append(str(path))
        doc = _Doc(path)
        if not isinstance(doc.data, dict) or not isinstance(
            doc.data.get("answer_generation"), dict
        ):
            raise doc.fail([], "no 'answer_generation' object")
        ag = doc.data["answer_generation"]
        agp: list[str | int] = ["answer_generation"]
        valid = ag.get("valid_data", True)
        if not isinstance(valid, bool):
            raise doc.fail(agp, f"valid_data must be a boolean, got {valid!r}")
        if not valid:
            skipped.append(str(path))
            continue
        train = ag.get("train_messages")
        if not isinstance(train, list) or not train:
            raise doc.fail(agp, "valid trajectory without a non-empty 'train_messages' list")
        messages = _check_messages(doc, train[-1], [*agp, "train_messages", len(train) - 1])
        functions = ag.get("function", [])
        if not isinstance(functions, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions
        ):
            raise doc.fail([*agp, "function"], "must be a list of objects with a string 'name'")
        by_name = {f["name"]: f for f in functions}
        tools = sorted({tool_of_function(n, by_name) for n in by_name} - {"Finish"})
        query = ag.get("query") if isinstance(ag.get("query"), str) else None

        # Shared tool prompt: the system message, then the function list as the model sees it.
        system = messages[0].get("content") or ""
        fn_text = json.dumps(functions, ensure_ascii=False)
        prefix = tok.encode(f"<|system|> {system}") + tok.encode(f"<|functions|> {fn_text}")
        prompt_id = hashlib.blake2b(
            (system + "\x00" + fn_text).encode("utf-8"), digest_size=6
        ).hexdigest()
        session = f"toolbench:{group}:{path.stem.split('_')[0]}"

        context = list(prefix)
        turn = 0
        think = 0.0
        returned = 0
        returned_fn: str | None = None
        last_output_end = len(context)
        for m in messages[1:]:
            if m["role"] != "assistant":
                header = f"<|{m['role']}|>" + (f" {m['name']}" if m["role"] == "function" else "")
                seg = tok.encode(header) + tok.encode(m.get("content") or "")
                context += seg
                if m["role"] == "function":
                    think += tool_duration_s
                    returned += len(seg)
                    returned_fn = m["name"]
                continue
            prompt = context + tok.encode("<|assistant|>")
            output = tok.encode(_assistant_text(m))
            called = m["function_call"]["name"] if m.get("function_call") else None
            arrival = (requests[-1].arrival_time if turn else 0.0) + think
            requests.append(
                Request(
                    request_id=f"{session}:{turn}",
                    arrival_time=arrival,
                    prompt_len=len(prompt),
                    output_len=len(output),
                    prompt_token_ids=prompt,
                    output_token_ids=output,
                    session_id=session,
                    turn=turn,
                    think_time_s=think,
                    metadata={
                        "group": group,
                        "query": query,
                        "function": called,
                        "tool": tool_of_function(called, by_name) if called else None,
                        "tools": tools,
                        "tool_prompt_id": prompt_id,
                        "tool_prompt_tokens": len(prefix),
                        "returned_function": returned_fn,
                        "returned_tokens": returned,
                        "appended_tokens": len(prompt) - last_output_end,
                        "finish_type": ag.get("finish_type"),
                    },
                )
            )
            context = prompt + output
            last_output_end = len(context)
            turn += 1
            think, returned, returned_fn = 0.0, 0, None
        n_used += 1
    return Workload(
        name="toolbench:" + "+".join(groups),
        requests=requests,
        sources=sources,
        params={
            "groups": list(groups),
            "tool_duration_s": tool_duration_s,
            "max_trajectories": max_trajectories,
            "tokenizer": repr(tok),
            "skipped": skipped,
        },
    )


def load_toolbench_queries(
    root: str | os.PathLike[str] | None = None,
    *,
    groups: Sequence[str] = TOOLBENCH_GROUPS,
    output_len: int = 128,
    tokenizer: Tokenizer | None = None,
) -> Workload:
    """Load ToolBench instruction queries (``instruction/<group>_query.json``) as single requests.

    Each query becomes one request whose prompt is its tools' API documentation followed by
    the query: the documentation is ordered by (tool, API) and encoded one tool at a time, so
    queries over the same tools share it as a prefix. Queries carry no answers, so every
    request generates ``output_len`` tokens. Shipped: 5 + 3 + 2 queries for G1, G2, G3.

    Request id = ``"toolbench-query:<group>:<query_id>"``; metadata: ``group``, ``query_id``,
    ``tools`` (in prompt order), ``categories``, ``relevant_apis`` ([tool, api] pairs).
    """
    if output_len < 0:
        raise ValueError(f"output_len must be >= 0, got {output_len}")
    base = Path(root) if root is not None else toolbench_root()
    tok = tokenizer if tokenizer is not None else HashTokenizer()
    requests: list[Request] = []
    sources: list[str] = []
    for group in groups:
        doc = _Doc(base / "instruction" / f"{group}_query.json")
        sources.append(doc.path)
        if not isinstance(doc.data, list):
            raise doc.fail([], "must be a list of queries")
        for qi, q in enumerate(doc.data):
            if not isinstance(q, dict):
                raise doc.fail([qi], "query must be an object")
            if not isinstance(q.get("query"), str):
                raise doc.fail([qi], "missing string 'query'")
            if "query_id" not in q:
                raise doc.fail([qi], "missing 'query_id'")
            apis = q.get("api_list", [])
            if not isinstance(apis, list) or not all(
                isinstance(a, dict) and isinstance(a.get("tool_name"), str) for a in apis
            ):
                raise doc.fail([qi, "api_list"], "must be a list of objects with 'tool_name'")
            by_tool: dict[str, list[dict[str, Any]]] = {}
            for a in apis:
                by_tool.setdefault(a["tool_name"], []).append(a)
            prompt: list[int] = []
            for tool in sorted(by_tool):
                docs = sorted(by_tool[tool], key=lambda a: str(a.get("api_name")))
                prompt += tok.encode(f"Tool: {tool} " + json.dumps(docs, ensure_ascii=False))
            prompt += tok.encode(f"Query: {q['query']}")
            requests.append(
                Request(
                    request_id=f"toolbench-query:{group}:{q['query_id']}",
                    arrival_time=0.0,
                    prompt_len=len(prompt),
                    output_len=output_len,
                    prompt_token_ids=prompt,
                    metadata={
                        "group": group,
                        "query_id": q["query_id"],
                        "tools": sorted(by_tool),
                        "categories": sorted({str(a.get("category_name")) for a in apis}),
                        "relevant_apis": q.get("relevant APIs", []),
                    },
                )
            )
    return Workload(
        name="toolbench-queries:" + "+".join(groups),
        requests=requests,
        sources=sources,
        params={"groups": list(groups), "output_len": output_len, "tokenizer": repr(tok)},
    )
