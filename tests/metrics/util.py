"""Building records by hand for the metrics tests."""

from __future__ import annotations

from core.metrics import RequestRecord


def make(
    rid: str,
    arrival: float,
    token_times: tuple[float, ...] | list[float],
    finish: float | None = None,
    reason: str | None = "stop",
    **kw,
) -> RequestRecord:
    """A record whose first token is ``token_times[0]`` and which finishes at its last token
    unless ``finish`` says otherwise."""
    times = tuple(token_times)
    if finish is None and reason is not None:
        finish = times[-1] if times else arrival
    return RequestRecord(
        request_id=rid,
        arrival=arrival,
        first_token=times[0] if times else None,
        finish=finish,
        token_times=times,
        output_tokens=len(times),
        prompt_tokens=kw.pop("prompt_tokens", 10),
        finish_reason=reason,
        **kw,
    )
