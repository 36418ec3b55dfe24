"""How much work a training job has and how fast it goes: a sequence of epochs whose duration
depends on the GPU type and on the batch size of that epoch (dynamic adaptation changes the
batch size, hence the epoch time, as training goes on).

Progress is measured in epochs (a float). :class:`EpochWork` turns progress into seconds and
back exactly: ``advance(p, t, s)`` runs ``s`` seconds on GPU type ``t`` from progress ``p``.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EpochWork:
    """Per GPU type, the seconds each epoch takes on the job's GPUs; ``batch_sizes[e]`` is the
    batch size of epoch ``e`` (informational: it is what a scheduler may observe)."""

    epoch_seconds: Mapping[str, Sequence[float]]
    batch_sizes: Sequence[int] = ()
    _cum: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        lens = {len(v) for v in self.epoch_seconds.values()}
        if len(lens) != 1 or 0 in lens:
            raise ValueError("every GPU type needs the same, non-zero number of epochs")
        for t, secs in self.epoch_seconds.items():
            if any(not s > 0 for s in secs):
                raise ValueError(f"GPU type {t}: epoch times must be > 0")
            self._cum[t] = [0.0, *itertools.accumulate(secs)]
        if self.batch_sizes and len(self.batch_sizes) != self.epochs:
            raise ValueError("batch_sizes needs one entry per epoch")

    @property
    def epochs(self) -> int:
        return len(next(iter(self.epoch_seconds.values())))

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(self.epoch_seconds)

    def total_seconds(self, gpu_type: str) -> float:
        return self._cum[gpu_type][-1]

    def seconds_at(self, progress: float, gpu_type: str) -> float:
        """Seconds of work on ``gpu_type`` needed to reach ``progress`` epochs from zero."""
        cum = self._cum[gpu_type]
        e = min(int(progress), self.epochs - 1)
        return cum[e] + (progress - e) * (cum[e + 1] - cum[e])

    def remaining_seconds(self, progress: float, gpu_type: str) -> float:
        return max(0.0, self.total_seconds(gpu_type) - self.seconds_at(progress, gpu_type))

    def advance(self, progress: float, gpu_type: str, seconds: float) -> tuple[float, float]:
        """Run ``seconds`` on ``gpu_type`` from ``progress``: (new progress, seconds used).
        Uses less than ``seconds`` only when the job completes (new progress == epochs)."""
        cum = self._cum[gpu_type]
        start = self.seconds_at(progress, gpu_type)
        target = start + seconds
        if target >= cum[-1]:
            return float(self.epochs), cum[-1] - start
        e = bisect.bisect_right(cum, target) - 1
        return e + (target - cum[e]) / (cum[e + 1] - cum[e]), seconds

    def epoch_index(self, progress: float) -> int:
        return min(int(progress), self.epochs - 1)

    def batch_size_at(self, progress: float) -> int:
        return self.batch_sizes[self.epoch_index(progress)] if self.batch_sizes else 0
