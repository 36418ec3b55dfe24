"""Paged KV cache manager: per-request block tables on a :class:`~core.kv.block_pool.BlockPool`.

``allocate_slots`` grows a request's computed tokens (``num_tokens``) by ``num_new_tokens`` and
returns only the new blocks, or ``None`` changing nothing if the pool cannot supply them.
:meth:`get_computed_blocks` never covers the whole prompt (the last token is always computed).
With prefix caching a block is registered under its hash as soon as it is allocated for known
``token_ids`` (as vLLM v1 does). Hit rates count once per admission (again after preemption).
:meth:`swap_out`/:meth:`swap_in` move a request's blocks to and from the host pool and return
block-id mappings for :func:`core.kv.swap.copy_blocks`; :meth:`free` releases a request.

A step's call sequence and the design notes in full: docs/core/kv.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.kv.block_pool import BlockHash, BlockPool, KVBlock, hash_block_tokens
from core.kv.errors import KVCacheError, StaleHandleError
from core.kv.swap import HostSwapPool


@dataclass(frozen=True)
class ComputedBlocks:
    """The cached prefix of a prompt: blocks (in order), their hashes, and the token counts.

    Valid until the next call that allocates blocks; :meth:`KVCacheManager.allocate_slots`
    checks that and raises :class:`StaleHandleError` if a block was reallocated meanwhile.
    """

    blocks: tuple[KVBlock, ...] = ()
    block_hashes: tuple[BlockHash, ...] = ()
    num_tokens: int = 0  # cached tokens = len(blocks) * block_size
    num_query_tokens: int = 0  # length of the prompt that was looked up

    @property
    def block_ids(self) -> list[int]:
        return [b.block_id for b in self.blocks]


@dataclass
class PrefixCacheStats:
    """Prefix-cache hit accounting, once per admitted request."""

    requests: int = 0
    query_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        """Cached prompt tokens / prompt tokens (0 before any request)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def reset(self) -> None:
        self.requests = self.query_tokens = self.hit_tokens = 0


@dataclass
class _RequestBlocks:
    blocks: list[KVBlock]
    num_tokens: int
    block_hashes: list[BlockHash] = field(default_factory=list)  # leading full blocks, hashed
    swapped: bool = False
    extra_key: bytes | None = None  # what else its KV depends on (a LoRA adapter)


class KVCacheManager:
    """Block tables of running requests over one block pool, with optional prefix caching.

    Args:
        num_blocks, block_size: the device pool's shape.
        enable_prefix_caching: hash full blocks and reuse them across requests.
        kv_bytes_per_token: bytes one token's KV takes over all layers (for byte accounting).
        num_host_blocks: size of the host swap pool (0: swapping disabled).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        kv_bytes_per_token: int = 0,
        num_host_blocks: int = 0,
    ):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(
            num_blocks,
            block_size,
            enable_caching=enable_prefix_caching,
            kv_bytes_per_token=kv_bytes_per_token,
        )
        self.host = HostSwapPool(num_host_blocks, block_size, kv_bytes_per_token=kv_bytes_per_token)
        self.stats = PrefixCacheStats()
        self._reqs: dict[str, _RequestBlocks] = {}

    # -- sizes ----------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of device blocks held by requests."""
        return self.pool.usage

    @property
    def kv_bytes_per_token(self) -> int:
        return self.pool.kv_bytes_per_token

    @property
    def used_bytes(self) -> int:
        return self.pool.used_bytes

    @property
    def free_bytes(self) -> int:
        return self.pool.free_bytes

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    # -- requests -------------------------------------------------------------------------------

    def has_request(self, request_id: str) -> bool:
        return request_id in self._reqs

    def is_swapped(self, request_id: str) -> bool:
        return self._get(request_id).swapped

    def num_tokens(self, request_id: str) -> int:
        """Tokens the request has slots for."""
        return self._get(request_id).num_tokens

    def get_blocks(self, request_id: str) -> list[KVBlock]:
        return list(self._get(request_id).blocks)

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (empty while swapped out)."""
        return [b.block_id for b in self._get(request_id).blocks]

    def slot_mapping(self, request_id: str, start: int = 0, end: int | None = None) -> list[int]:
        """Flat slot index ``block_id * block_size + offset`` of each position in ``[start, end)``."""
        req = self._get(request_id)
        if req.swapped:
            raise KVCacheError(f"request {request_id!r} is swapped out")
        end = req.num_tokens if end is None else end
        if not 0 <= start <= end <= req.num_tokens:
            raise IndexError(
                f"positions [{start}, {end}) outside request {request_id!r}'s "
                f"{req.num_tokens} slots"
            )
        bs, blocks = self.block_size, req.blocks
        return [blocks[p // bs].block_id * bs + p % bs for p in range(start, end)]

    def get_computed_blocks(
        self, token_ids: Sequence[int], extra_key: bytes | None = None
    ) -> ComputedBlocks:
        """The longest run of cached full blocks that prefixes ``token_ids``, short of its end.

        At most ``(len(token_ids) - 1) // block_size`` blocks, so at least one token is left
        to compute. Empty when prefix caching is off. Reads only: no counts change.
        ``extra_key``: what else the KV depends on (vLLM's extra keys, e.g. the LoRA adapter);
        only blocks cached under the same key match.
        """
        n = len(token_ids)
        if not self.enable_prefix_caching or n == 0:
            return ComputedBlocks(num_query_tokens=n)
        bs = self.block_size
        blocks: list[KVBlock] = []
        hashes: list[BlockHash] = []
        parent: BlockHash | None = None
        for i in range((n - 1) // bs):
            h = hash_block_tokens(parent, token_ids[i * bs : (i + 1) * bs], extra_key)
            b = self.pool.get_cached_block(h)
            if b is None:
                break
            blocks.append(b)
            hashes.append(h)
            parent = h
        return ComputedBlocks(tuple(blocks), tuple(hashes), len(blocks) * bs, n)

    def allocate_slots(
        self,
        request_id: str,
        num_new_tokens: int,
        computed_blocks: ComputedBlocks | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        extra_key: bytes | None = None,
    ) -> list[KVBlock] | None:
        """Give the request slots for ``num_new_tokens`` more tokens; the new blocks, or None.

        The first call for a request admits it: ``computed_blocks`` (from
        :meth:`get_computed_blocks`) become the head of its block table and its first
        ``computed_blocks.num_tokens`` tokens count as computed. Later calls extend it and must
        not pass computed blocks. Returns ``None`` and changes nothing when the pool has too few
        free blocks (cached free blocks the request itself revives count as used).
        ``extra_key`` (first call only, as given to :meth:`get_computed_blocks`): the request's
        full blocks are cached under it.
        """
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        req = self._reqs.get(request_id)
        computed = computed_blocks or ComputedBlocks()
        if req is not None:
            if computed.blocks:
                raise KVCacheError(
                    f"request {request_id!r} is already admitted; computed blocks only on the first call"
                )
            if req.swapped:
                raise KVCacheError(f"request {request_id!r} is swapped out; swap it in first")
            have, start = len(req.blocks), req.num_tokens
            revive = 0
        else:
            for b, h in zip(computed.blocks, computed.block_hashes, strict=True):
                if b.block_hash != h:
                    raise StaleHandleError(
                        f"computed block {b.block_id} of request {request_id!r} was reallocated "
                        "since get_computed_blocks(); look the prefix up again"
                    )
            have, start = len(computed.blocks), computed.num_tokens
            revive = sum(1 for b in computed.blocks if b.ref_cnt == 0)
        need = max(0, self.blocks_for(start + num_new_tokens) - have)
        if need + revive > self.pool.num_free_blocks:
            return None
        if req is None:
            self.pool.touch(computed.blocks)
            req = _RequestBlocks(
                list(computed.blocks), start, list(computed.block_hashes), extra_key=extra_key
            )
            self._reqs[request_id] = req
            self.stats.requests += 1
            self.stats.query_tokens += (
                computed.num_query_tokens
                if computed_blocks is not None
                else len(token_ids)
                if token_ids is not None
                else num_new_tokens
            )
            self.stats.hit_tokens += computed.num_tokens
        new_blocks = self.pool.allocate(need)
        req.blocks.extend(new_blocks)
        req.num_tokens = start + num_new_tokens
        if token_ids is not None:
            self._cache_full_blocks(req, token_ids)
        return new_blocks

    def _cache_full_blocks(self, req: _RequestBlocks, token_ids: Sequence[int]) -> None:
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(req.num_tokens, len(token_ids)) // bs
        hashes = req.block_hashes
        for i in range(len(hashes), full):
            parent = hashes[i - 1] if i else None
            h = hash_block_tokens(parent, token_ids[i * bs : (i + 1) * bs], req.extra_key)
            hashes.append(h)
            self.pool.cache_block(req.blocks[i], h)

    def truncate(self, request_id: str, num_tokens: int) -> None:
        """Shrink the request's slots to its first ``num_tokens`` (speculative tokens that were
        rejected) and free the blocks past them. Hashed blocks hold only committed tokens, so
        none past ``num_tokens`` is dropped from the cache by this."""
        req = self._get(request_id)
        if req.swapped:
            raise KVCacheError(f"request {request_id!r} is swapped out")
        if not 0 <= num_tokens <= req.num_tokens:
            raise ValueError(
                f"cannot truncate request {request_id!r} from {req.num_tokens} to {num_tokens}"
            )
        keep = self.blocks_for(num_tokens)
        dropped, req.blocks = req.blocks[keep:], req.blocks[:keep]
        del req.block_hashes[keep:]
        req.num_tokens = num_tokens
        if dropped:
            self.pool.free(dropped)

    def free(self, request_id: str) -> None:
        """Release everything the request holds (device blocks, or host blocks if swapped out)."""
        req = self._reqs.pop(request_id, None)
        if req is None:
            raise KVCacheError(f"request {request_id!r} holds no KV blocks")
        if req.swapped:
            self.host.discard(request_id)
        else:
            self.pool.free(req.blocks)

    # -- swapping -------------------------------------------------------------------------------

    def can_swap_out(self, request_id: str) -> bool:
        req = self._get(request_id)
        return not req.swapped and self.host.can_swap_out(len(req.blocks))

    def swap_out(self, request_id: str) -> dict[int, int]:
        """Move the request's blocks to host blocks; ``{device_id: host_id}`` to copy now.

        The device blocks are freed at once (hashed ones stay revivable). Raises
        :class:`~core.kv.errors.OutOfBlocksError` (changing nothing) if the host pool is full.
        """
        req = self._get(request_id)
        if req.swapped:
            raise KVCacheError(f"request {request_id!r} is already swapped out")
        mapping = self.host.swap_out(request_id, req.blocks)
        self.pool.free(req.blocks)
        req.blocks = []
        req.swapped = True
        return mapping

    def swap_in(self, request_id: str) -> dict[int, int] | None:
        """Bring a swapped-out request back; ``{host_id: device_id}`` to copy, or None if no room."""
        req = self._get(request_id)
        if not req.swapped:
            raise KVCacheError(f"request {request_id!r} is not swapped out")
        n = self.host.num_blocks_of(request_id)
        if n > self.pool.num_free_blocks:
            return None
        blocks = self.pool.allocate(n)
        mapping = self.host.swap_in(request_id, blocks)
        req.blocks = blocks
        req.swapped = False
        for b, h in zip(blocks, req.block_hashes, strict=False):
            self.pool.cache_block(b, h)
        return mapping

    # -- misc -----------------------------------------------------------------------------------

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only when no request holds device blocks."""
        return self.pool.reset_prefix_cache()

    def _get(self, request_id: str) -> _RequestBlocks:
        req = self._reqs.get(request_id)
        if req is None:
            raise KVCacheError(f"request {request_id!r} holds no KV blocks")
        return req

    def check_integrity(self) -> None:
        """Raise AssertionError unless every block's ref count equals its holders."""
        self.pool.check_integrity()
        self.host.check_integrity()
        holders: dict[int, int] = {}
        for rid, req in self._reqs.items():
            if req.swapped:
                assert not req.blocks and self.host.has(rid)
                assert self.host.num_blocks_of(rid) == self.blocks_for(req.num_tokens)
                continue
            assert len(req.blocks) == self.blocks_for(req.num_tokens), rid
            assert len(req.block_hashes) <= req.num_tokens // self.block_size
            for b in req.blocks:
                holders[b.block_id] = holders.get(b.block_id, 0) + 1
        for b in self.pool.blocks:
            assert b.ref_cnt == holders.get(b.block_id, 0), b

    def __repr__(self) -> str:
        return (
            f"KVCacheManager(blocks={self.num_blocks}, block_size={self.block_size}, "
            f"free={self.num_free_blocks}, requests={len(self._reqs)}, "
            f"prefix_caching={self.enable_prefix_caching})"
        )
