"""One request/session schema shared by every loader, generator, engine and simulator.

A :class:`Request` is what arrives at a serving system: when, with which prompt (as token ids,
as content-hashed blocks, or only as a length), how many tokens it will generate, which
session and turn it belongs to, and where it pauses for external calls. A :class:`Workload` is
an arrival-ordered list of requests plus where they came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Interception:
    """A pause for an external call (tool, API, retrieval, another model) during generation.

    The request stops after it has generated ``after_output_tokens`` output tokens in total,
    waits ``duration_s`` seconds, then resumes with ``returned_tokens`` tokens (the call's
    result) appended to its context before it continues generating.
    """

    after_output_tokens: int
    duration_s: float
    returned_tokens: int
    kind: str = "tool"
    returned_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.after_output_tokens < 0:
            raise ValueError(f"interception after_output_tokens={self.after_output_tokens} < 0")
        if not (self.duration_s >= 0 and math.isfinite(self.duration_s)):
            raise ValueError(f"interception duration_s={self.duration_s} must be finite and >= 0")
        if self.returned_tokens < 0:
            raise ValueError(f"interception returned_tokens={self.returned_tokens} < 0")
        if (
            self.returned_token_ids is not None
            and len(self.returned_token_ids) != self.returned_tokens
        ):
            raise ValueError(
                f"interception has {len(self.returned_token_ids)} returned_token_ids "
                f"but returned_tokens={self.returned_tokens}"
            )


@dataclass
class Request:
    """One request as it arrives at the serving system.

    Contract:
    - ``arrival_time`` is in seconds from the start of the workload (open-loop replay). For a
      session turn, ``think_time_s`` is the user's pause after the previous turn's response;
      closed-loop drivers may use previous-finish + think time instead of ``arrival_time``.
    - the prompt has ``prompt_len`` tokens; ``prompt_token_ids`` (when given) has exactly that
      many. ``block_hashes`` (when given) names the prompt's content per block of
      ``block_size`` tokens: equal hashes mean equal content, so prefixes can be matched without
      token ids (the last block may be partial).
    - the request generates ``output_len`` tokens in total, excluding tokens returned by
      interceptions; ``output_token_ids`` optionally fixes that reference response (generators
      use it to build the next turn's history).
    - ``interceptions`` are ordered by ``after_output_tokens``, each <= ``output_len``.
    """

    request_id: str
    arrival_time: float
    prompt_len: int
    output_len: int
    prompt_token_ids: list[int] | None = None
    block_hashes: list[int] | None = None
    block_size: int | None = None
    session_id: str | None = None
    turn: int = 0
    think_time_s: float = 0.0
    output_token_ids: list[int] | None = None
    interceptions: list[Interception] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"request {self.request_id!r}"
        if not (math.isfinite(self.arrival_time) and self.arrival_time >= 0):
            raise ValueError(f"{where}: arrival_time={self.arrival_time} must be finite and >= 0")
        if self.prompt_len < 0:
            raise ValueError(f"{where}: prompt_len={self.prompt_len} < 0")
        if self.output_len < 0:
            raise ValueError(f"{where}: output_len={self.output_len} < 0")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != self.prompt_len:
            raise ValueError(
                f"{where}: {len(self.prompt_token_ids)} prompt_token_ids "
                f"but prompt_len={self.prompt_len}"
            )
        if self.block_hashes is not None:
            if not self.block_size or self.block_size <= 0:
                raise ValueError(f"{where}: block_hashes given without a positive block_size")
            needed = -(-self.prompt_len // self.block_size)
            if len(self.block_hashes) != needed:
                raise ValueError(
                    f"{where}: {len(self.block_hashes)} block_hashes for prompt_len="
                    f"{self.prompt_len} and block_size={self.block_size} (expected {needed})"
                )
        if self.output_token_ids is not None and len(self.output_token_ids) != self.output_len:
            raise ValueError(
                f"{where}: {len(self.output_token_ids)} output_token_ids "
                f"but output_len={self.output_len}"
            )
        if self.think_time_s < 0:
            raise ValueError(f"{where}: think_time_s={self.think_time_s} < 0")
        last = -1
        for icp in self.interceptions:
            if icp.after_output_tokens < last or icp.after_output_tokens > self.output_len:
                raise ValueError(
                    f"{where}: interception at {icp.after_output_tokens} output tokens is out of "
                    f"order or beyond output_len={self.output_len}"
                )
            last = icp.after_output_tokens

    @property
    def total_returned_tokens(self) -> int:
        return sum(icp.returned_tokens for icp in self.interceptions)


@dataclass
class Workload:
    """An arrival-ordered list of requests and the files or generator they came from.

    Requests are sorted by ``(arrival_time, session_id, turn)`` on construction; request ids
    must be unique.
    """

    name: str
    requests: list[Request]
    sources: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requests = sorted(
            self.requests, key=lambda r: (r.arrival_time, r.session_id or "", r.turn)
        )
        seen: set[str] = set()
        for r in self.requests:
            if r.request_id in seen:
                raise ValueError(f"workload {self.name!r}: duplicate request_id {r.request_id!r}")
            seen.add(r.request_id)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def __getitem__(self, i: int) -> Request:
        return self.requests[i]

    @property
    def duration(self) -> float:
        """Seconds from the first to the last arrival (0 for fewer than two requests)."""
        if len(self.requests) < 2:
            return 0.0
        return self.requests[-1].arrival_time - self.requests[0].arrival_time

    def sessions(self) -> dict[str, list[Request]]:
        """Session id -> its turns in order; a request without a session is its own session."""
        out: dict[str, list[Request]] = {}
        for r in self.requests:
            out.setdefault(r.session_id or r.request_id, []).append(r)
        for turns in out.values():
            turns.sort(key=lambda r: r.turn)
        return out

    def head(self, n: int) -> Workload:
        """The first ``n`` requests by arrival."""
        return replace(self, requests=self.requests[:n], params={**self.params, "head": n})

    def with_arrival_times(self, times: Sequence[float]) -> Workload:
        """The same requests, in their current order, with new arrival times."""
        if len(times) != len(self.requests):
            raise ValueError(f"{len(times)} arrival times for {len(self.requests)} requests")
        reqs = [
            replace(r, arrival_time=float(t)) for r, t in zip(self.requests, times, strict=True)
        ]
        return replace(self, requests=reqs)

    def scale_time(self, factor: float) -> Workload:
        """Stretch (factor > 1) or compress (factor < 1) arrivals around the first arrival."""
        if not factor > 0:
            raise ValueError(f"time scale factor must be > 0, got {factor}")
        t0 = self.requests[0].arrival_time if self.requests else 0.0
        return self.with_arrival_times([t0 + (r.arrival_time - t0) * factor for r in self.requests])
