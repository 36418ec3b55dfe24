"""``GET /metrics``: the server's counters, gauges and latency histograms in the Prometheus
text format (version 0.0.4), written here without a client library."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["Gauges", "Histogram", "ServerMetrics"]

Gauges = dict[str, tuple[str, list[tuple[dict[str, str], float]]]]
"""name -> (help text, [(labels, value)])."""

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative buckets (upper bounds, seconds), a sum and a count."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return [*out, f"{name}_sum {self.sum!r}", f"{name}_count {self.count}"]


class ServerMetrics:
    """What the server counts: finished requests by reason, HTTP errors by status, prompt and
    generated tokens, TTFT and end-to-end latency of completed requests."""

    def __init__(self) -> None:
        self.finished: Counter[str] = Counter()
        self.http_errors: Counter[int] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram()
        self.e2e = Histogram()

    def request_done(
        self, reason: str, prompt_tokens: int, output_tokens: int, timeline: dict[str, Any]
    ) -> None:
        self.finished[reason] += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += output_tokens
        arrival = timeline.get("arrival_time")
        first, finish = timeline.get("first_token_time"), timeline.get("finish_time")
        if reason in ("stop", "length") and arrival is not None:
            if first is not None:
                self.ttft.observe(first - arrival)
            if finish is not None:
                self.e2e.observe(finish - arrival)

    def render(self, gauges: Gauges) -> str:
        """The exposition text; ``gauges``: name -> (help, [(labels, value)])."""
        lines: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}"])

        family(
            "servelab_requests_finished_total", "counter", "Engine requests finished, by reason."
        )
        for reason in (
            "stop",
            "length",
            "abort",
            "error",
            *sorted(set(self.finished) - {"stop", "length", "abort", "error"}),
        ):
            lines.append(
                f'servelab_requests_finished_total{{reason="{reason}"}} {self.finished[reason]}'
            )
        family("servelab_http_errors_total", "counter", "Error responses, by HTTP status.")
        for status in sorted(self.http_errors):
            lines.append(
                f'servelab_http_errors_total{{status="{status}"}} {self.http_errors[status]}'
            )
        family("servelab_prompt_tokens_total", "counter", "Prompt tokens of finished requests.")
        lines.append(f"servelab_prompt_tokens_total {self.prompt_tokens}")
        family(
            "servelab_generation_tokens_total", "counter", "Generated tokens of finished requests."
        )
        lines.append(f"servelab_generation_tokens_total {self.generation_tokens}")
        family("servelab_time_to_first_token_seconds", "histogram", "TTFT of completed requests.")
        lines.extend(self.ttft.lines("servelab_time_to_first_token_seconds"))
        family(
            "servelab_e2e_request_latency_seconds",
            "histogram",
            "End-to-end latency of completed requests.",
        )
        lines.extend(self.e2e.lines("servelab_e2e_request_latency_seconds"))
        for name, (help, samples) in gauges.items():
            family(name, "gauge", help)
            for labels, value in samples:
                tag = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{tag}}} {value!r}" if tag else f"{name} {value!r}")
        return "\n".join(lines) + "\n"
