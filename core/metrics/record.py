"""One finished (or unfinished) request, reduced to the numbers latency metrics need.

A :class:`RequestRecord` is a frozen, engine-independent copy of a request's timeline. The
engine, the simulator and trace replays all produce the same record, so every summary and
every fidelity comparison is computed by one piece of code.

Definitions (all times in seconds of the clock that produced the timeline; the engine's wall
clock or the simulator's virtual clock):

- ``ttft = first_token - arrival``: time to first token, queueing and prefill included.
- ``e2e = finish - arrival``: end-to-end latency.
- ``tpot = (e2e - ttft) / (output_tokens - 1)``: time per output token after the first (the
  vLLM ``benchmark_serving`` definition); undefined for fewer than two output tokens. The
  engine finishes a request at the time of its last token, so this is also the mean of
  :attr:`RequestRecord.itl`.
- ``normalized_latency = e2e / output_tokens`` (seconds per output token, as in vLLM, Orca,
  InferCept and Preble); undefined without output tokens.
- ``itl``: the gaps between consecutive token times (``output_tokens - 1`` of them).

Quantities that are undefined for a request are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

__all__ = ["COMPLETED", "EXCLUDED_REASONS", "RequestRecord", "records_by_id"]

#: Finish reasons whose requests are left out of latency statistics (counted, though).
#: ``None`` is a request that had not finished when the run ended.
EXCLUDED_REASONS: frozenset[str | None] = frozenset({"abort", "error", None})

#: The finish reasons the engine uses for requests that ran to completion.
COMPLETED: tuple[str, ...] = ("stop", "length")


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class RequestRecord:
    """A request's timeline and token counts; every derived metric is a property.

    Fields (times in seconds on one clock; counts in tokens):

    - ``arrival``: when the request arrived; ``first_token``: when its first output token was
      sampled (``None`` if it never got one); ``finish``: when it finished (``None`` if it had
      not finished when the run ended).
    - ``token_times``: when each output token was sampled, non-decreasing; either empty (not
      recorded) or exactly ``output_tokens`` long, starting at ``first_token``.
    - ``prompt_tokens``, ``output_tokens``: prompt length and sampled tokens (tokens returned
      by tool calls are neither).
    - ``cached_tokens``: prefix-cache hit of the request's latest admission (the engine's
      ``num_cached_tokens``; after a preemption it may cover generated tokens too).
    - ``preemptions``, ``pauses``, ``recomputed_tokens``: from the engine timeline.
    - ``finish_reason``: ``"stop"``, ``"length"``, ``"abort"``, ``"error"`` or ``None``
      (unfinished); other strings are treated as completed.
    - ``pause_spans``: external calls to take out of latency if the caller wants
      (:meth:`without_pauses`): ``(after, seconds)`` pairs, the call started after the
      request's ``after``-th output token and took ``seconds``. Empty if unknown.
    - ``session_id``, ``replica``: optional labels for grouping (multi-turn sessions,
      cluster replicas).

    Raises ``ValueError`` on an inconsistent timeline (naming the request), so bad input
    stops at the record rather than producing a wrong statistic.
    """

    request_id: str
    arrival: float
    first_token: float | None = None
    finish: float | None = None
    token_times: tuple[float, ...] = ()
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    preemptions: int = 0
    pauses: int = 0
    recomputed_tokens: int = 0
    finish_reason: str | None = None
    pause_spans: tuple[tuple[int, float], ...] = ()
    session_id: str | None = None
    replica: str | int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "request_id", str(self.request_id))
        set_(self, "arrival", float(self.arrival))
        set_(self, "first_token", _opt_float(self.first_token))
        set_(self, "finish", _opt_float(self.finish))
        set_(self, "token_times", tuple(float(t) for t in self.token_times))
        set_(self, "pause_spans", tuple((int(a), float(d)) for a, d in self.pause_spans))
        self._validate()

    def _validate(self) -> None:
        rid = self.request_id

        def bad(msg: str) -> ValueError:
            return ValueError(f"request {rid!r}: {msg}")

        times = [self.arrival, self.first_token, self.finish, *self.token_times]
        if not all(t is None or math.isfinite(t) for t in times):
            raise bad("timestamps must be finite")
        for name in (
            "prompt_tokens",
            "output_tokens",
            "cached_tokens",
            "preemptions",
            "pauses",
            "recomputed_tokens",
        ):
            if getattr(self, name) < 0:
                raise bad(f"{name}={getattr(self, name)} < 0")
        if self.first_token is not None and self.first_token < self.arrival:
            raise bad(f"first_token={self.first_token} before arrival={self.arrival}")
        if self.finish is not None and self.finish < self.arrival:
            raise bad(f"finish={self.finish} before arrival={self.arrival}")
        if self.token_times:
            if len(self.token_times) != self.output_tokens:
                raise bad(
                    f"{len(self.token_times)} token_times but output_tokens={self.output_tokens}"
                )
            if self.first_token != self.token_times[0]:
                raise bad(f"first_token={self.first_token} != token_times[0]={self.token_times[0]}")
            if any(b < a for a, b in pairwise(self.token_times)):
                raise bad("token_times must be non-decreasing")
            if self.finish is not None and self.finish < self.token_times[-1]:
                raise bad(f"finish={self.finish} before the last token={self.token_times[-1]}")
        if (
            self.first_token is not None
            and self.finish is not None
            and self.finish < self.first_token
        ):
            raise bad(f"finish={self.finish} before first_token={self.first_token}")
        if any(a < 0 or d < 0 for a, d in self.pause_spans):
            raise bad("pause_spans need after >= 0 and seconds >= 0")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_request(cls, req: Any, **overrides: Any) -> RequestRecord:
        """Record an engine/simulator request (duck-typed :class:`core.sched.EngineRequest`).

        Reads ``request_id``, ``timeline`` (``arrival_time``, ``first_token_time``,
        ``token_times``, ``finish_time``, ``num_preemptions``, ``num_pauses``,
        ``recomputed_tokens``), ``num_prompt_tokens``, ``num_output_tokens``,
        ``num_cached_tokens``, ``status.finish_reason``, and optional ``session_id`` and
        ``replica``. ``pause_spans`` come from the ``interceptions`` that fired (the first
        ``next_interception`` of them) with their ``duration_s``; explicit
        :meth:`Engine.pause` calls have no known duration and are not included.
        ``overrides`` replace any field (e.g. ``replica=3``).
        """
        tl = req.timeline
        status = getattr(req, "status", None)
        reason = getattr(status, "finish_reason", None)
        fired = list(getattr(req, "interceptions", ()))[: int(getattr(req, "next_interception", 0))]
        spans: list[tuple[int, float]] = []
        pos = 0
        for icp in fired:
            # the scheduler checks one interception per sampled token, so the i-th fires after
            # token max(after, previous + 1) (and never before the first token)
            pos = max(int(icp.after_output_tokens), pos + 1)
            spans.append((pos, float(icp.duration_s)))
        fields: dict[str, Any] = dict(
            request_id=req.request_id,
            arrival=tl.arrival_time,
            first_token=tl.first_token_time,
            finish=tl.finish_time,
            token_times=tuple(tl.token_times),
            prompt_tokens=int(req.num_prompt_tokens),
            output_tokens=int(req.num_output_tokens),
            cached_tokens=int(getattr(req, "num_cached_tokens", 0)),
            preemptions=int(tl.num_preemptions),
            pauses=int(tl.num_pauses),
            recomputed_tokens=int(tl.recomputed_tokens),
            finish_reason=reason,
            pause_spans=tuple(spans),
            session_id=getattr(req, "session_id", None),
            replica=getattr(req, "replica", None),
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_output(cls, out: Any, **overrides: Any) -> RequestRecord:
        """Record an engine result (duck-typed :class:`core.engine.RequestOutput`).

        Reads ``request_id``, ``prompt_token_ids``, ``token_ids``, ``finish_reason``,
        ``num_cached_tokens`` and ``metrics`` (the timeline's ``to_dict()``). An output carries
        no interception durations: pass ``pause_spans=...`` to exclude pauses later.
        """
        m: Mapping[str, Any] = out.metrics or {}
        if "arrival_time" not in m:
            raise ValueError(f"request {out.request_id!r}: output has no timeline in .metrics")
        token_times = tuple(m.get("token_times") or ())
        fields: dict[str, Any] = dict(
            request_id=out.request_id,
            arrival=m.get("arrival_time", 0.0),
            first_token=m.get("first_token_time"),
            finish=m.get("finish_time"),
            token_times=token_times,
            prompt_tokens=len(out.prompt_token_ids),
            output_tokens=len(out.token_ids),
            cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),
            preemptions=int(m.get("num_preemptions", 0)),
            pauses=int(m.get("num_pauses", 0)),
            recomputed_tokens=int(m.get("recomputed_tokens", 0)),
            finish_reason=getattr(out, "finish_reason", None),
            session_id=getattr(out, "session_id", None),
            replica=getattr(out, "replica", None),
        )
        fields.update(overrides)
        return cls(**fields)

    # -- derived metrics (seconds) --------------------------------------------------------

    @property
    def completed(self) -> bool:
        """Finished normally (not aborted, not rejected, not still running)."""
        return self.finish_reason not in EXCLUDED_REASONS

    @property
    def ttft(self) -> float | None:
        """Time to first token (s), or None without a first token."""
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e(self) -> float | None:
        """End-to-end latency (s), or None if unfinished."""
        return None if self.finish is None else self.finish - self.arrival

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (s/token): ``(e2e - ttft) / (n - 1)``;
        None for fewer than two output tokens or a missing timestamp."""
        if self.output_tokens < 2 or self.finish is None or self.first_token is None:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)

    @property
    def normalized_latency(self) -> float | None:
        """``e2e / output_tokens`` (s/token); None if unfinished or without output."""
        e2e = self.e2e
        return None if e2e is None or self.output_tokens == 0 else e2e / self.output_tokens

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies (s): the gaps between consecutive ``token_times``."""
        t = self.token_times
        return [b - a for a, b in pairwise(t)]

    @property
    def pause_time(self) -> float:
        """Total seconds of the recorded external calls (``pause_spans``)."""
        return float(sum(d for _, d in self.pause_spans))

    @property
    def hit_rate(self) -> float | None:
        """Cached prompt tokens / prompt tokens (cached clamped to the prompt); None for an
        empty prompt."""
        if self.prompt_tokens == 0:
            return None
        return min(self.cached_tokens, self.prompt_tokens) / self.prompt_tokens

    def without_pauses(self) -> RequestRecord:
        """The same request with each external call's duration cut out of its timeline.

        A call after the ``k``-th output token shifts tokens ``k+1, k+2, ...`` and the finish
        earlier by its duration (InferCept-style latency that does not charge the server for
        the tool's own time; time spent waiting to be rescheduled after the call stays in).
        Shifted times never move before the previous event (clamped), so the result is a
        valid record. Returns ``self`` if there are no ``pause_spans``.
        """
        if not self.pause_spans:
            return self

        def shift(index: int) -> float:  # seconds removed before output token `index` (0-based)
            return sum(d for after, d in self.pause_spans if after <= index)

        total = self.pause_time
        first: float | None
        if self.token_times:
            new_times: list[float] = []
            prev = self.arrival
            for i, t in enumerate(self.token_times):
                prev = max(t - shift(i), prev)
                new_times.append(prev)
            first = new_times[0]
            last = new_times[-1]
        else:
            new_times = []
            first = (
                None if self.first_token is None else max(self.first_token - shift(0), self.arrival)
            )
            last = first if first is not None else self.arrival
        finish = None if self.finish is None else max(self.finish - total, last, self.arrival)
        return replace(
            self, first_token=first, finish=finish, token_times=tuple(new_times), pause_spans=()
        )


def records_by_id(records: Iterable[RequestRecord]) -> dict[str, RequestRecord]:
    """Index records by ``request_id``; ``ValueError`` on a duplicate id."""
    out: dict[str, RequestRecord] = {}
    for r in records:
        if r.request_id in out:
            raise ValueError(f"duplicate request_id {r.request_id!r}")
        out[r.request_id] = r
    return out
