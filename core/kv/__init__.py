"""KV memory bookkeeping shared by the engine and the simulator (integers only, no tensors).

- :mod:`core.kv.block_pool`: :class:`BlockPool`, fixed-size KV blocks with ref counts, content
  hashes (SHA-256 chains) and an LRU free queue whose freed blocks stay revivable.
- :mod:`core.kv.manager`: :class:`KVCacheManager`, per-request block tables, prefix hits,
  slot mappings, hit-rate accounting, swap-out/in (vLLM v1 style).
- :mod:`core.kv.swap`: :class:`HostSwapPool` (host blocks for swapped requests) and
  :func:`copy_blocks`, the one tensor helper, which moves block contents for the engine.
- :mod:`core.kv.radix`: :class:`RadixCache`, a token-level radix prefix cache with SSM-state
  checkpoints for hybrid models, pages, locks, byte accounting and clones (SGLang, Marconi).
- :mod:`core.kv.policies`: the :class:`EvictionPolicy` and :class:`AdmissionPolicy` interfaces
  and their defaults (LRU; checkpoint at leaves, at branch points and leaves, every k tokens).
  A paper's own policies plug in from its artifact (Marconi's FLOP-aware eviction).
- :mod:`core.kv.slots`: :class:`SlotAllocator`, integer slots for token KV or SSM states.
- :mod:`core.kv.clock`: injectable clocks; nothing here reads the wall clock itself.
"""

from core.kv.block_pool import (
    BlockHash,
    BlockPool,
    BlockPoolStats,
    FreeBlockQueue,
    KVBlock,
    hash_block_tokens,
    hash_token_blocks,
)
from core.kv.clock import Clock, LogicalClock, ManualClock
from core.kv.errors import (
    DoubleFreeError,
    KVCacheError,
    LockError,
    OutOfBlocksError,
    StaleHandleError,
)
from core.kv.manager import ComputedBlocks, KVCacheManager, PrefixCacheStats
from core.kv.policies import (
    AdmissionPolicy,
    CheckpointAtBranchesAndLeaves,
    CheckpointAtLeaves,
    CheckpointEveryK,
    EvictionPolicy,
    KeyedEvictionPolicy,
    LRUEviction,
)
from core.kv.radix import (
    EvictResult,
    InsertResult,
    MatchResult,
    RadixCache,
    RadixCacheStats,
    RadixNode,
)
from core.kv.slots import SlotAllocator
from core.kv.swap import HostSwapPool, copy_blocks

__all__ = [
    "AdmissionPolicy",
    "BlockHash",
    "BlockPool",
    "BlockPoolStats",
    "CheckpointAtBranchesAndLeaves",
    "CheckpointAtLeaves",
    "CheckpointEveryK",
    "Clock",
    "ComputedBlocks",
    "DoubleFreeError",
    "EvictResult",
    "EvictionPolicy",
    "FreeBlockQueue",
    "HostSwapPool",
    "InsertResult",
    "KVBlock",
    "KVCacheError",
    "KVCacheManager",
    "KeyedEvictionPolicy",
    "LRUEviction",
    "LockError",
    "LogicalClock",
    "ManualClock",
    "MatchResult",
    "OutOfBlocksError",
    "PrefixCacheStats",
    "RadixCache",
    "RadixCacheStats",
    "RadixNode",
    "SlotAllocator",
    "StaleHandleError",
    "copy_blocks",
    "hash_block_tokens",
    "hash_token_blocks",
]
