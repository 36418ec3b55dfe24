"""Reshaping workloads: multi-turn sessions <-> one request with interceptions.

Loaders and generators represent an agent or chat as a *session of turns*, each turn a
separate LLM call whose prompt extends the previous turn's prompt and output. Systems that keep
a request alive across external calls (InferCept) want *one request that pauses*:
:func:`sessions_to_interceptions` folds each append-only session into that form.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from core.workload.schema import Interception, Request, Workload


def sessions_to_interceptions(
    workload: Workload, *, kind: str | Callable[[Request], str] = "tool"
) -> Workload:
    """Fold every multi-turn session into one request that pauses between turns.

    For a session with turns 0..K-1 (each turn k+1's prompt starting with turn k's prompt and
    output), the folded request has turn 0's prompt and arrival, generates the turns'
    outputs back to back (``output_len`` = their sum, ``output_token_ids`` concatenated when
    every turn has them), and after turn k's output pauses for an :class:`Interception` with
    ``duration_s`` = turn k+1's ``think_time_s`` and ``returned_tokens`` = the tokens turn
    k+1 appends (``prompt_len[k+1] - prompt_len[k] - output_len[k]``, with their ids when
    known). ``kind`` names the interception: a string, or a function of turn k+1.

    Requests without a session are kept as they are. The folded request's id is the session
    id (for one-turn sessions too) and its metadata is turn 0's plus ``folded_turns``.
    Raises ValueError if a session is not append-only.
    """
    out: list[Request] = []
    for sid, turns in workload.sessions().items():
        if turns[0].session_id is None:  # a request outside any session
            out.append(turns[0])
            continue
        first = turns[0]
        icps: list[Interception] = []
        generated = 0
        for prev, nxt in pairwise(turns):
            base = prev.prompt_len + prev.output_len
            appended = nxt.prompt_len - base
            where = f"session {sid!r} turn {nxt.turn}"
            if appended < 0:
                raise ValueError(
                    f"{where}: prompt_len={nxt.prompt_len} is shorter than the previous turn's "
                    f"prompt + output ({base}); the session is not append-only"
                )
            returned_ids = None
            if nxt.prompt_token_ids is not None and prev.prompt_token_ids is not None:
                head = nxt.prompt_token_ids[: prev.prompt_len]
                tail_ok = prev.output_token_ids is None or (
                    nxt.prompt_token_ids[prev.prompt_len : base] == prev.output_token_ids
                )
                if head != prev.prompt_token_ids or not tail_ok:
                    raise ValueError(
                        f"{where}: prompt does not start with the previous turn's prompt and "
                        f"output; the session is not append-only"
                    )
                returned_ids = tuple(nxt.prompt_token_ids[base:])
            generated += prev.output_len
            icps.append(
                Interception(
                    after_output_tokens=generated,
                    duration_s=nxt.think_time_s,
                    returned_tokens=appended,
                    kind=kind(nxt) if callable(kind) else kind,
                    returned_token_ids=returned_ids,
                )
            )
        out_ids: list[int] | None = None
        if all(t.output_token_ids is not None for t in turns):
            out_ids = [x for t in turns for x in t.output_token_ids]  # type: ignore[union-attr]
        out.append(
            Request(
                request_id=sid,
                arrival_time=first.arrival_time,
                prompt_len=first.prompt_len,
                output_len=generated + turns[-1].output_len,
                prompt_token_ids=first.prompt_token_ids,
                block_hashes=first.block_hashes,
                block_size=first.block_size,
                session_id=sid,
                turn=0,
                think_time_s=first.think_time_s,
                output_token_ids=out_ids,
                interceptions=icps,
                metadata={**first.metadata, "folded_turns": len(turns)},
            )
        )
    return Workload(
        name=workload.name,
        requests=out,
        sources=list(workload.sources),
        params={**workload.params, "sessions_folded": True},
    )
