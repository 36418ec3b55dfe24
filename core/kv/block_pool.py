"""A fixed pool of KV blocks with reference counts, content hashes and an LRU free queue.

The pool is pure bookkeeping: a block is an integer id naming ``block_size`` token slots of the
engine's KV tensors (``[num_blocks, block_size, ...]``); nothing here touches a tensor.

Prefix caching (vLLM v1 style)
------------------------------
A *full* block may carry a content hash: the SHA-256 of its parent block's hash and its own
``block_size`` token ids (:func:`hash_block_tokens`), so equal hashes mean equal prefixes, in
every process and on every run (``hashlib``, never Python's salted ``hash()``). The pool keeps
``hash -> block`` for blocks whose content is still valid.

When its reference count drops to zero, a block goes to the *free queue* but keeps its hash and
its content: a later request with the same prefix can revive it with :meth:`BlockPool.touch`
until :meth:`BlockPool.allocate` hands it out again, which is the moment its hash is dropped
("evicted"). The free queue is a doubly linked list, so a revived block leaves it in O(1).

Free-queue order (what is evicted first)
----------------------------------------
``allocate`` pops from the head. ``free`` appends hashed blocks to the tail, so the queue is in
LRU order, and it walks each request's blocks last-first, so a sequence's tail block (whose hash
hit needs all earlier blocks) is evicted before its head. Freed blocks *without* a hash hold
nothing reusable and go to the head, to be reused before any cached block (a small departure
from vLLM, which appends them too: it can only raise the hit rate).

Two blocks never share a hash in the table: if a second request computes a block whose hash is
already cached (both computed it concurrently), :meth:`BlockPool.cache_block` leaves the second
one unhashed and it is reused first once freed.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from core.kv.errors import DoubleFreeError, KVCacheError, OutOfBlocksError

BlockHash = bytes
"""A block's content hash: 32 bytes of SHA-256 (see :func:`hash_block_tokens`)."""

_ROOT_HASH: BlockHash = hashlib.sha256(b"servelab.kv.block-hash.v1").digest()


def hash_block_tokens(
    parent_hash: BlockHash | None,
    token_ids: Sequence[int],
    extra_key: bytes | None = None,
) -> BlockHash:
    """The content hash of one block: SHA-256 over the parent's hash and the block's tokens.

    ``parent_hash`` is ``None`` for a sequence's first block. Token ids are packed as
    little-endian signed 64-bit integers; ``extra_key`` (e.g. a LoRA adapter name, encoded)
    separates caches that must not share blocks although their tokens are equal. The result
    depends only on its inputs: stable across processes, runs and machines.
    """
    h = hashlib.sha256(_ROOT_HASH if parent_hash is None else parent_hash)
    try:
        h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    except struct.error as e:
        raise ValueError(f"token ids must be 64-bit integers: {e}") from None
    if extra_key:
        h.update(b"\x00extra\x00")
        h.update(extra_key)
    return h.digest()


def hash_token_blocks(
    token_ids: Sequence[int],
    block_size: int,
    parent_hash: BlockHash | None = None,
    extra_key: bytes | None = None,
) -> list[BlockHash]:
    """The hash chain of every *full* block of ``token_ids`` (a trailing partial block is skipped)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    out: list[BlockHash] = []
    h = parent_hash
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash_block_tokens(h, token_ids[start : start + block_size], extra_key)
        out.append(h)
    return out


class KVBlock:
    """One block's metadata: id, reference count, content hash, free-queue links.

    ``ref_cnt`` counts the requests (and other holders) using the block; 0 means it sits in the
    free queue, possibly still cached (``block_hash`` set) and revivable.
    """

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None

    @property
    def in_free_queue(self) -> bool:
        return self.prev_free is not None

    def __repr__(self) -> str:
        h = self.block_hash.hex()[:8] if self.block_hash is not None else None
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt}, hash={h})"


class FreeBlockQueue:
    """Free blocks as a doubly linked list threaded through the blocks themselves.

    The head is the next block to hand out. ``remove`` takes a block out of the middle in O(1)
    (a prefix hit on a freed block). Two sentinels keep every link non-``None`` inside the list,
    so "is in the queue" is ``block.prev_free is not None``.
    """

    def __init__(self, blocks: Iterable[KVBlock] = ()):
        self._head = KVBlock(-1)
        self._tail = KVBlock(-2)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        b = self._head.next_free
        while b is not self._tail:
            assert b is not None
            yield b
            b = b.next_free

    def _link_after(self, prev: KVBlock, block: KVBlock) -> None:
        if block.prev_free is not None:
            raise KVCacheError(f"block {block.block_id} is already in the free queue")
        nxt = prev.next_free
        assert nxt is not None
        block.prev_free, block.next_free = prev, nxt
        prev.next_free = block
        nxt.prev_free = block
        self._len += 1

    def append(self, block: KVBlock) -> None:
        """Put ``block`` at the tail (evicted last)."""
        assert self._tail.prev_free is not None
        self._link_after(self._tail.prev_free, block)

    def appendleft(self, block: KVBlock) -> None:
        """Put ``block`` at the head (handed out next)."""
        self._link_after(self._head, block)

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise KVCacheError(f"block {block.block_id} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1

    def popleft(self) -> KVBlock:
        b = self._head.next_free
        if b is self._tail or b is None:
            raise OutOfBlocksError("the free block queue is empty")
        self.remove(b)
        return b


@dataclass
class BlockPoolStats:
    """Counters since construction (or the last :meth:`reset`)."""

    allocated: int = 0  # blocks handed out by allocate()
    freed: int = 0  # blocks whose ref count reached 0
    revived: int = 0  # touch() of a free cached block (a hit that saved an eviction)
    evicted: int = 0  # cached hashes dropped because their block was reallocated

    def reset(self) -> None:
        self.allocated = self.freed = self.revived = self.evicted = 0


class BlockPool:
    """``num_blocks`` KV blocks of ``block_size`` tokens, with an LRU free queue and a hash table.

    Contract:
    - :meth:`allocate` (n) returns n blocks with ``ref_cnt == 1`` and no hash, popped from the
      head of the free queue; a popped cached block loses its hash. Asking for more than
      :attr:`num_free_blocks` raises :class:`OutOfBlocksError` and changes nothing.
    - :meth:`free` decrements each block's count, walking the list last-first; a block reaching
      0 joins the free queue (tail if hashed, head if not). Freeing more often than a block is
      held raises :class:`DoubleFreeError` and changes nothing.
    - :meth:`touch` adds a holder to blocks found by :meth:`get_cached_block`, reviving free ones.
    - :meth:`cache_block` registers a full, held block under its hash.
    - Memory: ``block_bytes = block_size * kv_bytes_per_token``; :attr:`used_bytes` and
      :attr:`free_bytes` count whole blocks (a cached free block counts as free).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_caching: bool = True,
        kv_bytes_per_token: int = 0,
    ):
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if kv_bytes_per_token < 0:
            raise ValueError(f"kv_bytes_per_token must be >= 0, got {kv_bytes_per_token}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.kv_bytes_per_token = kv_bytes_per_token
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[BlockHash, KVBlock] = {}
        self.stats = BlockPoolStats()

    # -- sizes -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks that :meth:`allocate` can hand out now (cached free blocks included)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered under a hash, held or free."""
        return len(self.cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by someone (0 for an empty pool)."""
        return self.num_used_blocks / self.num_blocks if self.num_blocks else 0.0

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.kv_bytes_per_token

    @property
    def used_bytes(self) -> int:
        return self.num_used_blocks * self.block_bytes

    @property
    def free_bytes(self) -> int:
        return self.num_free_blocks * self.block_bytes

    # -- allocation ---------------------------------------------------------------------------

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Hand out ``num_blocks`` blocks (ref count 1, no hash) from the head of the free queue."""
        if num_blocks < 0:
            raise ValueError(f"cannot allocate {num_blocks} blocks")
        if num_blocks > len(self.free_queue):
            raise OutOfBlocksError(
                f"asked for {num_blocks} blocks but only {len(self.free_queue)} of "
                f"{self.num_blocks} are free"
            )
        out = []
        for _ in range(num_blocks):
            b = self.free_queue.popleft()
            self._drop_hash(b)
            b.ref_cnt = 1
            out.append(b)
        self.stats.allocated += num_blocks
        return out

    def free(self, blocks: Sequence[KVBlock]) -> None:
        """Release one hold on each block, last block first (tails are evicted first)."""
        held = Counter(b.block_id for b in blocks)
        for bid, n in held.items():
            b = self._block(bid)
            if b.ref_cnt < n:
                raise DoubleFreeError(f"block {bid} freed {n} time(s) but held {b.ref_cnt} time(s)")
        for b in reversed(blocks):
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self.stats.freed += 1
                if b.block_hash is None:
                    self.free_queue.appendleft(b)
                else:
                    self.free_queue.append(b)

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add one holder to each block; a free cached block leaves the free queue (a revival)."""
        blocks = list(blocks)
        for b in blocks:
            self._block(b.block_id)
            if b.ref_cnt == 0 and b.block_hash is None:
                raise KVCacheError(
                    f"block {b.block_id} is free and holds no cached content; allocate it instead"
                )
        for b in blocks:
            if b.ref_cnt == 0:
                self.free_queue.remove(b)
                self.stats.revived += 1
            b.ref_cnt += 1

    # -- prefix cache -------------------------------------------------------------------------

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        """The block whose content has this hash, held or free, or ``None``."""
        return self.cached.get(block_hash)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> bool:
        """Register a full, held ``block`` under ``block_hash``; False if not registered.

        Not registered when caching is off, or when another block already holds that hash
        (the duplicate stays unhashed). Re-registering a block under its own hash is a no-op.
        """
        self._block(block.block_id)
        if block.ref_cnt <= 0:
            raise KVCacheError(f"block {block.block_id} is free; only held blocks can be cached")
        if block.block_hash is not None:
            if block.block_hash != block_hash:
                raise KVCacheError(f"block {block.block_id} already has a different hash")
            return True
        if not self.enable_caching or block_hash in self.cached:
            return False
        block.block_hash = block_hash
        self.cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> bool:
        """Forget every hash; only allowed when no block is held (returns False otherwise)."""
        if self.num_used_blocks:
            return False
        for b in self.blocks:
            b.block_hash = None
        self.cached.clear()
        return True

    def _drop_hash(self, b: KVBlock) -> None:
        if b.block_hash is not None:
            del self.cached[b.block_hash]
            b.block_hash = None
            self.stats.evicted += 1

    def _block(self, block_id: int) -> KVBlock:
        if not 0 <= block_id < self.num_blocks:
            raise KVCacheError(
                f"block id {block_id} is not in this pool (0..{self.num_blocks - 1})"
            )
        return self.blocks[block_id]

    # -- checks -------------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Raise AssertionError if the queue, counts and hash table disagree."""
        in_queue = [b.block_id for b in self.free_queue]
        assert len(in_queue) == len(self.free_queue) == len(set(in_queue))
        queued = set(in_queue)
        for b in self.blocks:
            assert b.ref_cnt >= 0, b
            assert (b.ref_cnt == 0) == (b.block_id in queued), b
            assert b.in_free_queue == (b.block_id in queued), b
            if b.block_hash is not None:
                assert self.cached.get(b.block_hash) is b, b
        for h, b in self.cached.items():
            assert b.block_hash == h
        if not self.enable_caching:
            assert not self.cached

    def __repr__(self) -> str:
        return (
            f"BlockPool(blocks={self.num_blocks}, block_size={self.block_size}, "
            f"free={self.num_free_blocks}, cached={self.num_cached_blocks})"
        )
