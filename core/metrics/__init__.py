"""Per-request timelines -> the latency, throughput and cache metrics serving papers report.

API (all times in seconds of the producing clock; TPOT and normalized latency in s/token):

- :class:`RequestRecord`: a frozen request timeline with token counts;
  ``RequestRecord.from_request(engine_request)``, ``RequestRecord.from_output(output)``;
  properties ``ttft``, ``tpot``, ``e2e``, ``normalized_latency``, ``itl``, ``hit_rate``,
  ``pause_time``, ``completed``; ``without_pauses()`` cuts external-call time out.
- :class:`SLO` ``(ttft=None, tpot=None, e2e=None, normalized=None)``: bounds a request must
  all meet.
- :func:`summarize` ``(records, *, slo=None, duration=None, exclude_pauses=False) -> dict``:
  one flat row (counts by finish reason, throughput, token hit rate, preemptions, recomputed
  tokens, ``<metric>_<stat>`` for TTFT/TPOT/E2E/normalized/ITL, SLO attainment, goodput).
- :class:`MetricsSummary`: the same, typed (``from_records``, ``to_dict``, ``table``).
- :class:`Stats`: count, mean, min, p50, p90, p95, p99, max; percentiles are numpy's
  ``method="linear"`` (:data:`PERCENTILE_METHOD`).
- :func:`to_frame` ``(records) -> pandas.DataFrame``: one row per request.
- :func:`compare` ``(a, b) -> dict``: signed relative errors of ``b``'s statistics against the
  reference ``a``, requests matched by id (the simulator fidelity report).
- :func:`highest_rate_within` ``(rates, latencies, bound)``: the highest rate of a sweep that
  meets a latency bound (interpolated), and whether the sweep saturated.
- :func:`rotated_order` ``(items, rounds)``: interleaved rounds, the order rotating from round
  to round; :func:`summarize_rounds` ``(frame, key, metrics)`` -> :class:`RoundsSummary`: per
  item the median, min and max over rounds, and paired per-round ratios; :func:`order_words`
  says the order the runs ran in.

Aborted (``abort``), rejected (``error``) and unfinished requests are counted but never enter
latency statistics. See :mod:`core.metrics.record` for the metric definitions and
:mod:`core.metrics.summary` for which requests count where. Imports numpy and pandas only (no
torch), so the simulator can use it.
"""

from core.metrics.capacity import highest_rate_within
from core.metrics.compare import compare, relative_error
from core.metrics.record import COMPLETED, EXCLUDED_REASONS, RequestRecord, records_by_id
from core.metrics.rounds import RoundsSummary, order_words, rotated_order, summarize_rounds
from core.metrics.stats import PERCENTILE_METHOD, PERCENTILES, STAT_NAMES, Stats, percentile
from core.metrics.summary import (
    FRAME_COLUMNS,
    LATENCY_METRICS,
    SLO,
    MetricsSummary,
    summarize,
    to_frame,
)

__all__ = [
    "COMPLETED",
    "EXCLUDED_REASONS",
    "FRAME_COLUMNS",
    "LATENCY_METRICS",
    "PERCENTILES",
    "PERCENTILE_METHOD",
    "SLO",
    "STAT_NAMES",
    "MetricsSummary",
    "RequestRecord",
    "RoundsSummary",
    "Stats",
    "compare",
    "highest_rate_within",
    "percentile",
    "records_by_id",
    "relative_error",
    "order_words",
    "rotated_order",
    "summarize",
    "summarize_rounds",
    "to_frame",
]
