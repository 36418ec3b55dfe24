"""ForwardBatch construction and the cache layouts the engine allocates from the model."""

from __future__ import annotations

import pytest
import torch

from core.model import ForwardBatch, ModelSpec, load_model

from .conftest import ARCHS, hf_config


def test_build_lays_out_a_mixed_batch():
    b = ForwardBatch.build(
        new_tokens=[[7, 8, 9], [4]],
        num_cached=[2, 5],
        block_tables=[[3, 1], [0, 2]],
        block_size=4,
        state_indices=[5, 6],
    )
    assert b.input_ids.tolist() == [7, 8, 9, 4]
    assert b.positions.tolist() == [2, 3, 4, 5]
    assert b.query_start_loc.tolist() == [0, 3, 4]
    assert b.seq_lens.tolist() == [5, 6]
    # positions 2, 3 in block 3; 4 in block 1; position 5 of seq 2 in block 2
    assert b.slot_mapping.tolist() == [14, 15, 4, 9]
    assert b.has_initial_state.tolist() == [True, True]
    assert b.query_lens() == [3, 1] and b.context_lens() == [5, 6]


def test_build_pads_block_tables_and_marks_fresh_sequences():
    b = ForwardBatch.build([[1, 2], [3]], [0, 0], [[0], [1, 2]], 4)
    assert b.block_tables.tolist() == [[0, -1], [1, 2]]
    assert b.has_initial_state.tolist() == [False, False]


def test_build_rejects_short_block_tables_and_empty_sequences():
    with pytest.raises(ValueError, match="sequence 1: 9 tokens need 3 blocks"):
        ForwardBatch.build([[1], [1, 2, 3]], [0, 6], [[0], [1, 2]], 4)
    with pytest.raises(ValueError, match="sequence 0 has no new tokens"):
        ForwardBatch.build([[]], [0], [[0]], 4)


def test_lengths_read_back_from_device_when_not_given():
    b = ForwardBatch.build([[1, 2, 3], [4]], [0, 2], [[0], [1]], 4)
    b.query_lens_host = b.seq_lens_host = None
    assert b.query_lens() == [3, 1] and b.context_lens() == [3, 3]


def test_kv_cache_layout():
    model, cfg = load_model(hf_config("qwen3"))
    kv = model.allocate_kv_cache(num_blocks=10, block_size=16)
    assert len(kv.k) == len(kv.v) == cfg.num_layers
    assert kv.k[0].shape == (10, 16, cfg.num_kv_heads, cfg.head_dim)
    assert kv.k[0].dtype == torch.float32 and kv.block_size == 16 and kv.num_blocks == 10
    assert kv.nbytes() == 10 * model.kv_cache_bytes_per_block(16)
    half = model.allocate_kv_cache(2, 16, dtype=torch.bfloat16)
    assert half.k[0].dtype == torch.bfloat16
    big = model.allocate_kv_cache(num_blocks=2048, block_size=16)  # one huge-page buffer
    tensors = [*big.k, *big.v]
    assert all(t.is_contiguous() and not t.any() for t in tensors)
    for i, t in enumerate(tensors):  # layers are disjoint views: a write stays in its layer
        t.fill_(i + 1)
    assert [int(t.float().mean().item()) for t in tensors] == list(range(1, len(tensors) + 1))
    assert model.state_bytes_per_slot() == 0 and model.allocate_state_pool(4).num_slots == 0


def test_state_pool_layout_and_slot_copy():
    model, cfg = load_model(hf_config("bamba"))
    m = cfg.mamba
    assert cfg.layer_types == ("mamba", "attention", "mamba")
    assert len(model.allocate_kv_cache(4, 8).k) == 1  # attention layers only
    pool = model.allocate_state_pool(num_slots=5)
    assert len(pool.conv) == len(pool.ssm) == 2
    assert pool.conv[0].shape == (5, m.conv_dim, m.d_conv - 1)
    assert pool.ssm[0].shape == (5, m.n_heads, m.head_dim, m.d_state)
    assert pool.ssm[0].dtype == torch.float32
    assert pool.nbytes() == 5 * model.state_bytes_per_slot()
    for t in (*pool.conv, *pool.ssm):
        t[1].normal_()
    model.copy_state_slot(pool, 1, 3)
    assert all(torch.equal(t[1], t[3]) for t in (*pool.conv, *pool.ssm))
    pool.zero_(1)
    assert all(t[1].abs().sum() == 0 for t in (*pool.conv, *pool.ssm))
    assert model.allocate_state_pool(2, ssm_dtype=torch.float64).ssm[0].dtype == torch.float64


def test_attention_backend_is_selectable_on_the_model():
    model, _ = load_model(hf_config("llama"))
    model.set_attention_backend("torch")
    assert model.attention_backend().name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.set_attention_backend("nope")


@pytest.mark.parametrize("arch", ARCHS)
def test_sizes_agree_with_model_spec(arch):
    """The engine's model and the simulator's ModelSpec count the same parameters and bytes."""
    model, cfg = load_model(hf_config(arch))
    spec = ModelSpec.from_hf_config(cfg.hf_config)
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    assert spec.kv_bytes_per_token(torch.float32) * 16 == model.kv_cache_bytes_per_block(16)
    assert spec.ssm_state_bytes("float32", "float32") == model.state_bytes_per_slot()
