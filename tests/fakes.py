"""Stand-ins shared by scheduler-level tests (no model, no sampler)."""

from __future__ import annotations

from dataclasses import dataclass

from core.sched import EngineRequest


@dataclass
class Params:
    """The sampling fields the scheduler reads (a stand-in for ``SamplingParams``)."""

    max_tokens: int
    ignore_eos: bool = True
    stop_token_ids: tuple = ()
    min_tokens: int = 0


def fake_token(req: EngineRequest) -> int:
    """A deterministic 'sampled' token that depends only on the request's state."""
    return (len(req.token_ids) * 7 + len(req.request_id)) % 50 + 3
