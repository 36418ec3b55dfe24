"""Two stages that pass micro-batches back and forth, layer after layer: the ping-pong
schedule of attention/expert disaggregation (attention ranks holding the KV cache, expert ranks
holding the experts; each MoE layer goes attention -> experts -> attention).

:func:`pingpong_timeline` is the exact schedule of one decode iteration for given per-stage
times and a one-way transfer time; :class:`Slot` is its record, the same record the real
runtime (:mod:`core.dist.disagg`) writes from its clocks, so a measured timeline and a modelled
one compare slot by slot. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ATTENTION",
    "EXPERT",
    "Slot",
    "check_times",
    "pingpong_iteration_s",
    "pingpong_timeline",
    "timeline_iteration_s",
]

ATTENTION = "attention"
EXPERT = "expert"


@dataclass(frozen=True)
class Slot:
    """One side working on one micro-batch of one layer, from ``start`` to ``end`` seconds."""

    side: str
    layer: int
    micro_batch: int
    start: float
    end: float


def check_times(t_a: float, t_e: float, t_c: float, m: int, layers: int) -> None:
    """One clear ValueError for a negative or non-finite time, or fewer than 1 micro-batch or
    layer."""
    if min(t_a, t_e, t_c) < 0 or not all(math.isfinite(x) for x in (t_a, t_e, t_c)):
        raise ValueError(f"times must be finite and >= 0, got T_a={t_a}, T_e={t_e}, T_c={t_c}")
    if m < 1 or layers < 1:
        raise ValueError(f"m and layers must be >= 1, got m={m}, layers={layers}")


def pingpong_timeline(t_a: float, t_e: float, t_c: float, m: int, layers: int) -> list[Slot]:
    """The exact schedule of one decode iteration: ``m`` micro-batches through ``layers``
    layers, attention ``t_a`` and experts ``t_e`` seconds per micro-batch and layer, ``t_c``
    seconds each way between the sides. Both sides take ``(layer, micro-batch)`` in
    lexicographic order; an op starts when its side is free and its input has arrived.
    Micro-batch ``i`` starts layer 0 at time 0; the iteration ends ``t_c`` after the last
    expert op (:func:`timeline_iteration_s`)."""
    slots: list[Slot] = []
    _schedule(t_a, t_e, t_c, m, layers, slots)
    return slots


def _schedule(
    t_a: float, t_e: float, t_c: float, m: int, layers: int, record: list[Slot] | None
) -> float:
    """Run the schedule of :func:`pingpong_timeline` (appending its slots to ``record`` when
    given); returns when the last expert op ends."""
    check_times(t_a, t_e, t_c, m, layers)
    back = [0.0] * m  # when micro-batch i's input for its next attention op is there
    free_a = free_e = 0.0
    for layer in range(layers):
        for i in range(m):
            start_a = max(free_a, back[i])
            free_a = start_a + t_a
            start_e = max(free_e, free_a + t_c)
            free_e = start_e + t_e
            back[i] = free_e + t_c
            if record is not None:
                record.append(Slot(ATTENTION, layer, i, start_a, free_a))
                record.append(Slot(EXPERT, layer, i, start_e, free_e))
    return free_e


def timeline_iteration_s(slots: Sequence[Slot], t_c: float) -> float:
    """When the last micro-batch's expert output is back on the attention side."""
    return max(s.end for s in slots if s.side == EXPERT) + t_c


def pingpong_iteration_s(t_a: float, t_e: float, t_c: float, m: int, layers: int) -> float:
    """The iteration time of :func:`pingpong_timeline` without recording its slots."""
    return _schedule(t_a, t_e, t_c, m, layers, None) + t_c
