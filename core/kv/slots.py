"""A pool of integer slots: token KV slots or SSM-state slots for the radix cache.

SGLang-style engines index KV per token (``page_size`` 1) and SSM states per slot; the radix
cache stores those integers as opaque values and hands them back through its free callbacks.
:class:`SlotAllocator` is the matching allocator: bookkeeping only, deterministic (lowest free
slot first), and strict about double frees, so leaks and double frees surface in tests.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from core.kv.errors import DoubleFreeError, OutOfBlocksError


class SlotAllocator:
    """``num_slots`` integer slots ``0..num_slots-1``; :meth:`alloc` takes, :meth:`free` returns.

    ``bytes_per_slot`` lets callers account memory in bytes (e.g. ``kv_bytes_per_token`` for
    token slots, ``ssm_state_bytes`` for state slots).
    """

    def __init__(self, num_slots: int, *, bytes_per_slot: int = 0, name: str = "slot"):
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        self.num_slots = num_slots
        self.bytes_per_slot = bytes_per_slot
        self.name = name
        self._free: list[int] = list(range(num_slots))  # a heap; sorted is a valid heap
        self._is_free = bytearray(b"\x01") * num_slots

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    @property
    def used_bytes(self) -> int:
        return self.num_used * self.bytes_per_slot

    def is_free(self, slot: int) -> bool:
        return bool(self._is_free[slot])

    def alloc(self, n: int) -> list[int]:
        """``n`` free slots, lowest first; :class:`OutOfBlocksError` (no change) if fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} {self.name}s")
        if n > len(self._free):
            raise OutOfBlocksError(
                f"asked for {n} {self.name}s but only {len(self._free)} of {self.num_slots} are free"
            )
        out = [heapq.heappop(self._free) for _ in range(n)]
        for s in out:
            self._is_free[s] = 0
        return out

    def alloc_one(self) -> int:
        return self.alloc(1)[0]

    def free(self, slots: Iterable[int]) -> None:
        """Return slots; :class:`DoubleFreeError` (no change) if any is free or repeated."""
        slots = list(slots)
        seen: set[int] = set()
        for s in slots:
            if not 0 <= s < self.num_slots:
                raise DoubleFreeError(f"{self.name} {s} is not in 0..{self.num_slots - 1}")
            if self._is_free[s] or s in seen:
                raise DoubleFreeError(f"{self.name} {s} freed twice")
            seen.add(s)
        for s in slots:
            self._is_free[s] = 1
            heapq.heappush(self._free, s)

    def __repr__(self) -> str:
        return f"SlotAllocator({self.name}s={self.num_slots}, free={self.num_free})"
