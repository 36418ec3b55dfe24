"""Errors raised by the KV-memory bookkeeping.

Every error is a :class:`KVCacheError` (a ``RuntimeError``), so an engine can catch the family
at once. They signal misuse or exhaustion that the caller must handle; none of them leaves the
object in a half-updated state: an operation that raises has changed nothing.
"""

from __future__ import annotations


class KVCacheError(RuntimeError):
    """Base class of every KV-memory error."""


class OutOfBlocksError(KVCacheError):
    """More blocks, slots or host blocks were requested than are free."""


class DoubleFreeError(KVCacheError):
    """A block or slot was freed more times than it was handed out."""


class LockError(KVCacheError):
    """A radix node was unlocked below zero, or (un)locked after it left the tree."""


class StaleHandleError(KVCacheError):
    """A handle (computed blocks, match result) no longer describes the cache's state."""
