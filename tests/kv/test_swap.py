"""HostSwapPool bookkeeping and copy_blocks: a swap round trip preserves KV bit-exactly."""

from __future__ import annotations

import pytest
import torch

from core.kv import HostSwapPool, KVCacheError, KVCacheManager, OutOfBlocksError, copy_blocks


def test_host_pool_swap_out_in_and_capacity():
    host = HostSwapPool(4, 16, kv_bytes_per_token=2)
    out = host.swap_out("a", [7, 3, 5])
    assert out == {7: 0, 3: 1, 5: 2}  # block-table order, lowest host ids first
    assert host.num_used_blocks == 3 and host.used_bytes == 3 * 32 and host.has("a")
    with pytest.raises(OutOfBlocksError):
        host.swap_out("b", [1, 2])
    assert not host.has("b") and host.num_free_blocks == 1
    with pytest.raises(KVCacheError):
        host.swap_out("a", [1])  # already out
    with pytest.raises(KVCacheError):
        host.swap_out("c", [1, 1])
    with pytest.raises(KVCacheError):
        host.swap_in("a", [0, 1])  # wrong count
    back = host.swap_in("a", [2, 0, 1])
    assert back == {0: 2, 1: 0, 2: 1}
    assert host.num_free_blocks == 4 and not host.has("a")
    with pytest.raises(KVCacheError):
        host.swap_in("a", [])
    host.swap_out("d", [9])
    assert host.discard("d") == 1 and host.num_free_blocks == 4
    assert host.blocks_swapped_out == 4 and host.blocks_swapped_in == 3
    host.check_integrity()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_swap_round_trip_is_bit_exact(dtype):
    torch.manual_seed(0)
    num_dev, num_host, bs = 8, 6, 4
    kv = KVCacheManager(num_dev, bs, num_host_blocks=num_host)
    # two layers, layout [num_blocks, block_size, heads, head_dim]
    dev = [torch.randn(num_dev, bs, 2, 3).to(dtype) for _ in range(2)]
    dev[0][0, 0, 0, 0] = float("nan")
    dev[1][1, 1, 1, 1] = -0.0
    host = [torch.zeros(num_host, bs, 2, 3, dtype=dtype) for _ in range(2)]

    kv.allocate_slots("other", 5)
    prompt = list(range(11))
    kv.allocate_slots("a", len(prompt), token_ids=prompt)
    table = kv.block_ids("a")
    before = [_bits(t[table]).clone() for t in dev]

    copy_blocks(dev, host, kv.swap_out("a"))
    kv.free("other")
    kv.allocate_slots("scribbler", num_dev * bs)  # reuse every device block, overwrite it
    for t in dev:
        t.fill_(7.0)
    kv.free("scribbler")
    copy_blocks(host, dev, kv.swap_in("a"))

    new_table = kv.block_ids("a")
    for t, b in zip(dev, before, strict=True):
        assert torch.equal(_bits(t[new_table]), b)


def test_copy_blocks_block_dim_and_single_tensor():
    src = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # [kv, blocks, ...]
    dst = torch.zeros(2, 4, 3)
    copy_blocks(src, dst, {4: 0, 1: 3}, block_dim=1)
    assert torch.equal(dst[:, 0], src[:, 4]) and torch.equal(dst[:, 3], src[:, 1])
    assert torch.equal(dst[:, 1:3], torch.zeros(2, 2, 3))
    copy_blocks(src, dst, [])  # empty mapping: nothing to do


def test_copy_blocks_rejects_bad_inputs():
    a = torch.zeros(4, 2)
    with pytest.raises(ValueError):
        copy_blocks(a, torch.zeros(4, 2, dtype=torch.float16), {0: 0})
    with pytest.raises(ValueError):
        copy_blocks(a, torch.zeros(4, 3), {0: 0})
    with pytest.raises(ValueError):
        copy_blocks(a, torch.zeros(4, 2), {0: 1, 2: 1})
    with pytest.raises(IndexError):
        copy_blocks(a, torch.zeros(2, 2), {0: 2})
    with pytest.raises(ValueError):
        copy_blocks([a], [a, a], {0: 0})
    with pytest.raises(TypeError):
        copy_blocks(a, [a], {0: 0})
