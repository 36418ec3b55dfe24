"""Run-level summaries: latency distributions, throughput, hit rate, SLO attainment, goodput.

Which requests count where:

- **latency statistics** (TTFT, TPOT, E2E, normalized latency, ITL) use *completed* requests
  only (finish reason not ``abort``, ``error`` or ``None``); aborted, rejected and unfinished
  requests are counted by finish reason but never enter a latency distribution. A request
  with one output token has no TPOT and no ITL. ITL pools every gap of every completed
  request (one sample per gap, as vLLM's benchmark does).
- **throughput** counts completed requests and their tokens over ``duration``: the given one,
  or the makespan (first arrival to last finish over all records).
- **token hit rate** is ``sum(min(cached, prompt)) / sum(prompt)`` over completed requests.
- **SLO attainment** is the fraction of *all* requests that completed and met every bound the
  :class:`SLO` sets (a failed or aborted request misses its SLO). **Goodput** is the requests
  (``goodput``, req/s) and output tokens (``token_goodput``, tok/s) of those requests per
  second of ``duration``.

Units: seconds, seconds per token (TPOT, normalized latency), requests/s and tokens/s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.metrics.record import RequestRecord
from core.metrics.stats import STAT_NAMES, Stats

if TYPE_CHECKING:  # pandas is imported when a frame is asked for, to keep imports light
    import pandas as pd

__all__ = ["FRAME_COLUMNS", "LATENCY_METRICS", "SLO", "MetricsSummary", "summarize", "to_frame"]

#: Latency metrics a summary describes, each a :class:`Stats` (seconds or s/token).
LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2e", "normalized_latency", "itl")

_KNOWN_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error", "unfinished")


@dataclass(frozen=True)
class SLO:
    """Latency bounds a request must all meet (``<=``); ``None`` sets no bound.

    ``ttft``, ``e2e`` in seconds; ``tpot``, ``normalized`` (E2E / output tokens) in seconds
    per token. A request with fewer than two output tokens has no TPOT and meets any TPOT
    bound. At least one bound must be set; every bound must be > 0.
    """

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None
    normalized: float | None = None

    def __post_init__(self) -> None:
        bounds = self.bounds()
        if not bounds:
            raise ValueError("an SLO needs at least one bound (ttft, tpot, e2e, normalized)")
        for name, v in bounds.items():
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"SLO {name}={v} must be finite and > 0")

    def bounds(self) -> dict[str, float]:
        """The bounds that are set, by name."""
        return {
            k: v
            for k, v in (
                ("ttft", self.ttft),
                ("tpot", self.tpot),
                ("e2e", self.e2e),
                ("normalized", self.normalized),
            )
            if v is not None
        }

    def met(self, r: RequestRecord) -> bool:
        """Whether ``r`` completed and met every bound."""
        if not r.completed:
            return False
        values = {"ttft": r.ttft, "tpot": r.tpot, "e2e": r.e2e, "normalized": r.normalized_latency}
        for name, bound in self.bounds().items():
            v = values[name]
            if v is None:
                if name == "tpot":
                    continue  # no second token: nothing to bound
                return False  # a completed request without the timestamp cannot be shown to meet it
            if v > bound:
                return False
        return True


@dataclass(frozen=True)
class MetricsSummary:
    """Everything :func:`summarize` reports, typed; see the module docstring for the rules.

    ``latency`` maps each of :data:`LATENCY_METRICS` to its :class:`Stats`. ``finish_reasons``
    counts every record by reason (``"unfinished"`` for ``None``). Throughputs, goodputs and
    ``duration`` are NaN when no duration is known; the SLO fields are NaN/0 without an SLO.
    """

    num_requests: int
    num_completed: int
    finish_reasons: Mapping[str, int]
    duration: float
    request_throughput: float
    output_throughput: float
    total_throughput: float
    token_hit_rate: float
    preemptions: int
    pauses: int
    recomputed_tokens: int
    latency: Mapping[str, Stats]
    slo: SLO | None = None
    slo_met: int = 0
    slo_attainment: float = math.nan
    goodput: float = math.nan
    token_goodput: float = math.nan
    exclude_pauses: bool = False

    @classmethod
    def from_records(
        cls,
        records: Iterable[RequestRecord],
        *,
        slo: SLO | None = None,
        duration: float | None = None,
        exclude_pauses: bool = False,
    ) -> MetricsSummary:
        """Summarize ``records``; ``duration`` (s, > 0) overrides the makespan;
        ``exclude_pauses`` first applies :meth:`RequestRecord.without_pauses`."""
        recs = [r.without_pauses() if exclude_pauses else r for r in records]
        if duration is not None and not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration={duration} must be finite and > 0")
        done = [r for r in recs if r.completed]

        reasons: Counter[str] = Counter({k: 0 for k in _KNOWN_REASONS})
        reasons.update("unfinished" if r.finish_reason is None else r.finish_reason for r in recs)

        if duration is None:
            finishes = [r.finish for r in recs if r.finish is not None]
            span = max(finishes) - min(r.arrival for r in recs) if finishes else math.nan
            duration = span if span > 0 else math.nan

        def per_s(x: float) -> float:
            return x / duration if not math.isnan(duration) else math.nan

        out_tokens = sum(r.output_tokens for r in done)
        prompt = sum(r.prompt_tokens for r in done)
        cached = sum(min(r.cached_tokens, r.prompt_tokens) for r in done)
        latency = {
            "ttft": Stats.of(r.ttft for r in done),
            "tpot": Stats.of(r.tpot for r in done),
            "e2e": Stats.of(r.e2e for r in done),
            "normalized_latency": Stats.of(r.normalized_latency for r in done),
            "itl": Stats.of(g for r in done for g in r.itl),
        }
        slo_fields: dict[str, Any] = {}
        if slo is not None:
            met = [r for r in recs if slo.met(r)]
            slo_fields = dict(
                slo=slo,
                slo_met=len(met),
                slo_attainment=len(met) / len(recs) if recs else math.nan,
                goodput=per_s(len(met)),
                token_goodput=per_s(sum(r.output_tokens for r in met)),
            )
        return cls(
            num_requests=len(recs),
            num_completed=len(done),
            finish_reasons=dict(reasons),
            duration=duration,
            request_throughput=per_s(len(done)),
            output_throughput=per_s(out_tokens),
            total_throughput=per_s(out_tokens + prompt),
            token_hit_rate=cached / prompt if prompt else math.nan,
            preemptions=sum(r.preemptions for r in recs),
            pauses=sum(r.pauses for r in recs),
            recomputed_tokens=sum(r.recomputed_tokens for r in recs),
            latency=latency,
            exclude_pauses=exclude_pauses,
            **slo_fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """One flat row (for ``metrics.csv``): counts (``num_<reason>``), ``duration``,
        throughputs, ``token_hit_rate``, totals, ``<metric>_<stat>`` for every latency metric
        and :data:`~core.metrics.stats.STAT_NAMES` entry (e.g. ``ttft_p90``), and the SLO
        bounds (``slo_ttft``, ... NaN if unset), ``slo_met``, ``slo_attainment``,
        ``goodput``, ``token_goodput``."""
        d: dict[str, Any] = {"num_requests": self.num_requests, "num_completed": self.num_completed}
        d.update({f"num_{k}": v for k, v in self.finish_reasons.items()})
        d.update(
            duration=self.duration,
            request_throughput=self.request_throughput,
            output_throughput=self.output_throughput,
            total_throughput=self.total_throughput,
            token_hit_rate=self.token_hit_rate,
            preemptions=self.preemptions,
            pauses=self.pauses,
            recomputed_tokens=self.recomputed_tokens,
            exclude_pauses=self.exclude_pauses,
        )
        for metric in LATENCY_METRICS:
            for stat, v in self.latency[metric].as_dict().items():
                d[f"{metric}_{stat}"] = v
        bounds = self.slo.bounds() if self.slo is not None else {}
        for name in ("ttft", "tpot", "e2e", "normalized"):
            d[f"slo_{name}"] = bounds.get(name, math.nan)
        d.update(
            slo_met=self.slo_met,
            slo_attainment=self.slo_attainment,
            goodput=self.goodput,
            token_goodput=self.token_goodput,
        )
        return d

    def table(self) -> pd.DataFrame:
        """Latency statistics as a table: one row per metric, columns
        :data:`~core.metrics.stats.STAT_NAMES` (seconds; TPOT and normalized in s/token)."""
        import pandas as pd

        rows = [self.latency[m].as_dict() for m in LATENCY_METRICS]
        return pd.DataFrame(
            rows, index=pd.Index(list(LATENCY_METRICS), name="metric"), columns=list(STAT_NAMES)
        )


def summarize(
    records: Iterable[RequestRecord],
    *,
    slo: SLO | None = None,
    duration: float | None = None,
    exclude_pauses: bool = False,
) -> dict[str, Any]:
    """The flat summary of a run: :meth:`MetricsSummary.to_dict` of
    :meth:`MetricsSummary.from_records` (same arguments)."""
    return MetricsSummary.from_records(
        records, slo=slo, duration=duration, exclude_pauses=exclude_pauses
    ).to_dict()


FRAME_COLUMNS: tuple[str, ...] = (
    "request_id",
    "session_id",
    "replica",
    "finish_reason",
    "completed",
    "arrival",
    "first_token",
    "finish",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "hit_rate",
    "preemptions",
    "pauses",
    "recomputed_tokens",
    "pause_time",
    "ttft",
    "tpot",
    "e2e",
    "normalized_latency",
    "itl_max",
)


def to_frame(records: Iterable[RequestRecord], *, exclude_pauses: bool = False) -> pd.DataFrame:
    """One row per request (tidy), columns :data:`FRAME_COLUMNS`; undefined metrics are NaN.

    Times are seconds; ``itl_max`` is the request's largest inter-token gap. With
    ``exclude_pauses`` every record first goes through :meth:`RequestRecord.without_pauses`
    (``pause_time`` still reports what was cut).
    """
    import pandas as pd

    rows = []
    for r in records:
        pause_time = r.pause_time
        if exclude_pauses:
            r = r.without_pauses()
        itl = r.itl
        rows.append(
            {
                "request_id": r.request_id,
                "session_id": r.session_id,
                "replica": r.replica,
                "finish_reason": r.finish_reason,
                "completed": r.completed,
                "arrival": r.arrival,
                "first_token": r.first_token,
                "finish": r.finish,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "cached_tokens": r.cached_tokens,
                "hit_rate": r.hit_rate,
                "preemptions": r.preemptions,
                "pauses": r.pauses,
                "recomputed_tokens": r.recomputed_tokens,
                "pause_time": pause_time,
                "ttft": r.ttft,
                "tpot": r.tpot,
                "e2e": r.e2e,
                "normalized_latency": r.normalized_latency,
                "itl_max": max(itl) if itl else None,
            }
        )
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    float_cols = [
        "arrival",
        "first_token",
        "finish",
        "hit_rate",
        "pause_time",
        "ttft",
        "tpot",
        "e2e",
        "normalized_latency",
        "itl_max",
    ]
    df[float_cols] = df[float_cols].astype(float)
    return df
