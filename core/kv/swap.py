"""Host (CPU) swap space for KV blocks, and the tensor copy that moves block contents.

:class:`HostSwapPool` is bookkeeping only: it decides which host block receives which device
block when a request is swapped out, and which device block receives it back on swap-in. The
engine moves the bytes with :func:`copy_blocks` using the returned mappings; the simulator
charges the transfer time (bytes = blocks * :attr:`HostSwapPool.block_bytes`) to its cost
model instead. The usual entry points are :meth:`core.kv.manager.KVCacheManager.swap_out` and
``swap_in``, which also free and allocate the device blocks.

Ordering contract for the engine: a swap-out mapping must be copied (device -> host) before
any forward pass writes into the freed device blocks, and a swap-in mapping (host -> device)
before the request's next forward pass reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from core.kv.block_pool import KVBlock
from core.kv.errors import KVCacheError, OutOfBlocksError

if TYPE_CHECKING:  # torch is only needed by copy_blocks; bookkeeping never imports it
    import torch


def _block_id(b: KVBlock | int) -> int:
    return b.block_id if isinstance(b, KVBlock) else int(b)


class HostSwapPool:
    """``num_blocks`` host blocks of ``block_size`` tokens, lent to swapped-out requests.

    Contract:
    - :meth:`swap_out` (request, device blocks in block-table order) takes one host block per
      device block and returns ``{device_id: host_id}`` in that order. Not enough host blocks
      raises :class:`OutOfBlocksError` and changes nothing; a request can be swapped out once
      until it is swapped back in or discarded.
    - :meth:`swap_in` (request, fresh device blocks, as many as it swapped out) returns
      ``{host_id: device_id}`` in block-table order and releases the host blocks.
    - :meth:`discard` releases a request's host blocks without a copy (the request finished or
      was aborted while swapped out).
    Host blocks are handed out lowest id first, so runs are deterministic.
    """

    def __init__(self, num_blocks: int, block_size: int, *, kv_bytes_per_token: int = 0):
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_bytes_per_token = kv_bytes_per_token
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives the lowest id
        self._held: dict[str, list[int]] = {}
        self.blocks_swapped_out = 0
        self.blocks_swapped_in = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.kv_bytes_per_token

    @property
    def used_bytes(self) -> int:
        return self.num_used_blocks * self.block_bytes

    def has(self, request_id: str) -> bool:
        return request_id in self._held

    def num_blocks_of(self, request_id: str) -> int:
        """How many host blocks the request holds (0 if it is not swapped out)."""
        return len(self._held.get(request_id, ()))

    def host_blocks(self, request_id: str) -> list[int]:
        return list(self._held[request_id])

    def can_swap_out(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def swap_out(self, request_id: str, device_blocks: Sequence[KVBlock | int]) -> dict[int, int]:
        """Reserve host blocks for ``device_blocks``; returns ``{device_id: host_id}``."""
        if request_id in self._held:
            raise KVCacheError(f"request {request_id!r} is already swapped out")
        dev = [_block_id(b) for b in device_blocks]
        if len(set(dev)) != len(dev):
            raise KVCacheError(f"request {request_id!r}: duplicate device blocks {dev}")
        if len(dev) > len(self._free):
            raise OutOfBlocksError(
                f"swap-out of request {request_id!r} needs {len(dev)} host blocks but only "
                f"{len(self._free)} of {self.num_blocks} are free"
            )
        host = [self._free.pop() for _ in dev]
        self._held[request_id] = host
        self.blocks_swapped_out += len(dev)
        return dict(zip(dev, host, strict=True))

    def swap_in(self, request_id: str, device_blocks: Sequence[KVBlock | int]) -> dict[int, int]:
        """Release the request's host blocks into ``device_blocks``; returns ``{host_id: device_id}``."""
        host = self._held.get(request_id)
        if host is None:
            raise KVCacheError(f"request {request_id!r} is not swapped out")
        dev = [_block_id(b) for b in device_blocks]
        if len(dev) != len(host):
            raise KVCacheError(
                f"request {request_id!r} swapped out {len(host)} blocks; got {len(dev)} to swap in"
            )
        if len(set(dev)) != len(dev):
            raise KVCacheError(f"request {request_id!r}: duplicate device blocks {dev}")
        del self._held[request_id]
        self._release(host)
        self.blocks_swapped_in += len(dev)
        return dict(zip(host, dev, strict=True))

    def discard(self, request_id: str) -> int:
        """Release the request's host blocks without copying back; returns how many."""
        host = self._held.pop(request_id, None)
        if host is None:
            raise KVCacheError(f"request {request_id!r} is not swapped out")
        self._release(host)
        return len(host)

    def _release(self, host: Iterable[int]) -> None:
        self._free.extend(host)
        self._free.sort(reverse=True)

    def check_integrity(self) -> None:
        held = [h for hs in self._held.values() for h in hs]
        every = held + self._free
        assert len(every) == self.num_blocks == len(set(every)), "host block leaked or doubled"
        assert all(0 <= h < self.num_blocks for h in every)

    def __repr__(self) -> str:
        return (
            f"HostSwapPool(blocks={self.num_blocks}, free={self.num_free_blocks}, "
            f"requests={len(self._held)})"
        )


def copy_blocks(
    src: torch.Tensor | Sequence[torch.Tensor],
    dst: torch.Tensor | Sequence[torch.Tensor],
    mapping: Mapping[int, int] | Iterable[tuple[int, int]],
    *,
    block_dim: int = 0,
) -> None:
    """Copy block ``s`` of ``src`` into block ``d`` of ``dst`` for every ``s -> d`` in ``mapping``.

    ``src`` and ``dst`` are caches laid out ``[..., num_blocks, block_size, ...]`` with the block
    index on ``block_dim`` (0 by default), or equal-length sequences of such tensors (one per
    layer). Shapes may differ only in the number of blocks; dtypes must match. Works across
    devices (device <-> pinned host). Destination ids must be distinct. Uses one
    ``index_select`` + ``index_copy_`` per tensor, so the copy is bit-exact.
    """
    import torch

    pairs = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    if isinstance(src, torch.Tensor) != isinstance(dst, torch.Tensor):
        raise TypeError("src and dst must both be tensors or both be sequences of tensors")
    srcs = [src] if isinstance(src, torch.Tensor) else list(src)
    dsts = [dst] if isinstance(dst, torch.Tensor) else list(dst)
    if len(srcs) != len(dsts):
        raise ValueError(f"{len(srcs)} source tensors but {len(dsts)} destination tensors")
    if not pairs:
        return
    s_ids = [int(s) for s, _ in pairs]
    d_ids = [int(d) for _, d in pairs]
    if len(set(d_ids)) != len(d_ids):
        raise ValueError(f"destination blocks repeat: {d_ids}")
    for i, (s, d) in enumerate(zip(srcs, dsts, strict=True)):
        if s.dtype != d.dtype:
            raise ValueError(f"tensor {i}: dtype {s.dtype} -> {d.dtype}")
        if s.dim() != d.dim() or any(
            a != b
            for k, (a, b) in enumerate(zip(s.shape, d.shape, strict=True))
            if k != block_dim % s.dim()
        ):
            raise ValueError(
                f"tensor {i}: shapes {tuple(s.shape)} and {tuple(d.shape)} differ beyond dim {block_dim}"
            )
        for ids, t, name in ((s_ids, s, "source"), (d_ids, d, "destination")):
            n = t.shape[block_dim]
            bad = [x for x in ids if not 0 <= x < n]
            if bad:
                raise IndexError(f"tensor {i}: {name} block ids {bad} out of range 0..{n - 1}")
        s_idx = torch.tensor(s_ids, dtype=torch.long, device=s.device)
        d_idx = torch.tensor(d_ids, dtype=torch.long, device=d.device)
        moved = s.index_select(block_dim, s_idx).to(d.device)
        d.index_copy_(block_dim, d_idx, moved)
