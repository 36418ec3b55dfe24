"""ModelSpec: shapes -> parameters, bytes and FLOPs, checked against hand arithmetic and against
the modules transformers builds from the same configs (Marconi's paper formulas are checked
against it in tests/artifacts/marconi/test_policies.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.model.spec import (
    PRESETS,
    SUPPORTED_MODEL_TYPES,
    Mixer,
    MLPKind,
    ModelSpec,
    OpKind,
    dtype_bytes,
    preset_config,
    preset_names,
)

GiB = 2**30


def spec(name: str) -> ModelSpec:
    return ModelSpec.from_preset(name)


def op(ops, name):
    (found,) = [o for o in ops if o.name == name]
    return found


# ---- parameters and bytes, by hand ------------------------------------------------------------


def test_llama3_8b_parameter_count_by_hand():
    s = spec("llama-3-8b")
    d, inter, layers, vocab, kv_dim = 4096, 14336, 32, 128256, 8 * 128
    embed = vocab * d  # 525,336,576; lm_head untied: the same again
    attn = d * d + 2 * d * kv_dim + d * d  # q, k, v (GQA: 8 heads of 128), o = 41,943,040
    mlp = 3 * d * inter  # gate, up, down = 176,160,768
    norms = 2 * d  # input and post-attention RMSNorm
    total = 2 * embed + layers * (attn + mlp + norms) + d  # + final norm
    assert total == 8_030_261_248
    assert s.num_params == total == s.num_active_params
    assert s.param_breakdown()["lm_head"] == embed
    assert (s.n_heads, s.n_kv_heads, s.head_dim, s.num_layers) == (32, 8, 128, 32)


def test_llama3_8b_kv_and_weight_bytes():
    s = spec("llama-3-8b")
    # 32 layers * 8 kv heads * 128 head_dim * 2 (K, V) * 2 bytes
    assert s.kv_bytes_per_token("bfloat16") == 32 * 8 * 128 * 2 * 2 == 131072
    assert s.kv_bytes_per_token("fp8") == 65536
    assert s.weight_bytes("bf16") == 8_030_261_248 * 2 == 16_060_522_496  # ~14.96 GiB
    assert s.weight_bytes("int4") == 8_030_261_248 // 2
    assert s.weight_bytes(4) == s.weight_bytes("float32")
    assert s.ssm_state_bytes("float32") == 0 and not s.is_hybrid and not s.is_moe


def test_mixtral_8x7b_total_and_active_parameters():
    s = spec("mixtral-8x7b")
    d, inter, layers, vocab = 4096, 14336, 32, 32000
    embeds = 2 * vocab * d  # embedding + lm_head = 262,144,000
    attn = d * d + 2 * d * 1024 + d * d  # 41,943,040 per layer
    expert = 3 * d * inter  # 176,160,768
    router = 8 * d
    norms = layers * 2 * d + d
    total = embeds + layers * (attn + 8 * expert + router) + norms
    active = embeds + layers * (attn + 2 * expert + router) + norms
    assert total == 46_702_792_704 and s.num_params == total
    assert active == 12_879_925_248 and s.num_active_params == active
    assert (s.num_experts, s.top_k, s.intermediate_size) == (8, 2, 14336)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-2-70b", 68_976_648_192),
        ("llama-3-70b", 70_553_706_496),
        ("mistral-7b", 7_241_732_096),
        ("qwen2-7b", 7_615_616_512),
        ("qwen3-8b", 8_190_735_360),
        ("tiny-llama-125m", 124_668_672),
    ],
)
def test_published_parameter_counts(name, params):
    assert spec(name).num_params == params


def test_bamba_9b_shapes_and_size():
    s = spec("bamba-9b")
    assert s.attention_layer_indices == (9, 18, 27) and s.n_ssm_layers == 29
    assert s.n_mlp_layers == 32  # every layer, attention or Mamba2, has an MLP
    m = s.mamba
    assert (m.n_heads, m.head_dim, m.d_inner, m.d_state, m.n_groups) == (128, 64, 8192, 128, 1)
    assert m.conv_dim == 8192 + 2 * 1 * 128
    assert s.num_params == pytest.approx(9.78e9, rel=1e-3)  # "Bamba-9.8B"
    assert s.kv_bytes_per_token("bf16") == 3 * 8 * 128 * 2 * 2
    # per layer: 128*64*128 fp32 state values + 8448*(4-1) bf16 conv values
    per_layer = 128 * 64 * 128 * 4 + 8448 * 3 * 2
    assert s.ssm_state_bytes("float32", conv_dtype="bf16") == 29 * per_layer


# ---- FLOPs -----------------------------------------------------------------------------------


def test_llama3_8b_decode_flops_by_hand():
    s = spec("llama-3-8b")
    ctx = 1000
    ops = s.operators(decode_contexts=[ctx])
    # Every GEMM weight except the embedding table (a lookup) and the norms, 2 FLOPs per weight:
    gemm_params = 8_030_261_248 - 128256 * 4096 - (65 * 4096)
    assert sum(o.flops for o in ops if o.kind is OpKind.GEMM) == 2 * gemm_params
    # Attention: 32 layers * 4 * 32 heads * 128 * (ctx + 1 keys)
    assert op(ops, "attention").flops == 32 * 4 * 32 * 128 * (ctx + 1)
    assert s.decode_flops(ctx) == sum(o.flops for o in ops)
    assert s.decode_flops(ctx) == pytest.approx(2 * gemm_params, rel=0.05)


CONSISTENCY_PRESETS = [
    "tiny-llama-125m",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen3-8b",
    "bamba-9b",
    "marconi-hybrid-7b",
    "tiny-nemotron-h",
]


@pytest.mark.parametrize("name", CONSISTENCY_PRESETS)
def test_prefill_equals_decode_steps(name):
    s = spec(name)
    n, c = 37, 4090  # crosses Mistral's 4096-token window
    steps = sum(s.decode_flops(c + i) for i in range(n))
    assert s.prefill_flops(n, c, all_logits=True) == pytest.approx(steps, rel=1e-12)
    # The same from the operator lists: one chunk vs a batch of the n decode steps.
    chunk = s.operators(prefill_chunks=[(n, c)], all_logits=True)
    batch = s.operators(decode_contexts=[c + i for i in range(n)])
    assert sum(o.flops for o in chunk) == pytest.approx(sum(o.flops for o in batch), rel=1e-12)
    assert sum(o.flops for o in chunk) == pytest.approx(steps, rel=1e-12)
    # By default only the chunk's last token gets logits: n - 1 fewer lm_head rows.
    lm_head_row = 2 * s.hidden_size * s.vocab_size
    assert s.prefill_flops(n, c) == pytest.approx(steps - (n - 1) * lm_head_row, rel=1e-12)
    # Chunking a prefill only changes the lm_head term.
    whole = s.prefill_flops(100, 0, all_logits=True)
    parts = s.prefill_flops(60, 0, all_logits=True) + s.prefill_flops(40, 60, all_logits=True)
    assert whole == pytest.approx(parts, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(CONSISTENCY_PRESETS),
    n=st.integers(1, 5000),
    c=st.integers(0, 20000),
    dn=st.integers(1, 500),
    dc=st.integers(1, 5000),
)
def test_flops_monotone_in_tokens_and_context(name, n, c, dn, dc):
    s = spec(name)
    assert s.prefill_flops(n + dn, c) > s.prefill_flops(n, c) > 0
    assert s.prefill_flops(n, c + dc) >= s.prefill_flops(n, c)
    assert s.decode_flops(c + dc) >= s.decode_flops(c) > 0
    ops = s.operators(prefill_chunks=[(n, c)])  # the O(1) formula is the operators' sum
    assert s.prefill_flops(n, c) == pytest.approx(sum(o.flops for o in ops), rel=1e-12)
    if s.attention and s.attention.sliding_window is None:  # strictly, without a window
        assert s.prefill_flops(n, c + dc) > s.prefill_flops(n, c)


def test_sliding_window_caps_attention():
    s = spec("mistral-7b")  # window 4096
    W, n, c = 4096, 300, 3900

    def attn(chunk):
        return op(s.operators(prefill_chunks=[chunk]), "attention").flops

    brute = sum(min(p, W) for p in range(c + 1, c + n + 1))
    assert attn((n, c)) == 32 * 4 * 32 * 128 * brute
    assert s.decode_flops(10**6) == s.decode_flops(W)  # beyond the window, flat
    assert s.decode_flops(W - 2) < s.decode_flops(W - 1)


def test_attended_keys_match_brute_force_with_and_without_window():
    cfg = preset_config("tiny-mixtral") | {
        "model_type": "mistral",
        "sliding_window": 8,
        "architectures": ["MistralForCausalLM"],
    }
    windowed = ModelSpec.from_hf_config(cfg)
    full = ModelSpec.from_hf_config(cfg | {"sliding_window": None})
    per_key = 2 * 4 * 4 * 16  # 2 layers * 4 (QK^T + PV) * 4 heads * head_dim 16
    for n in range(1, 14):
        for c in range(0, 14):
            positions = range(c + 1, c + n + 1)
            for s, attended in (
                (windowed, sum(min(p, 8) for p in positions)),
                (full, sum(positions)),
            ):
                att = op(s.operators(prefill_chunks=[(n, c)]), "attention")
                assert att.flops == per_key * attended, (s.attention.sliding_window, n, c)


# ---- operators -------------------------------------------------------------------------------


def test_operators_cover_every_block_and_split_with_tp():
    s = spec("tiny-nemotron-h")
    batch = dict(prefill_chunks=[(64, 0), (16, 100)], decode_contexts=[5, 50, 500])
    names = {o.name for o in s.operators(**batch)}
    for expected in (
        "embedding",
        "norm",
        "qkv_proj",
        "attention",
        "o_proj",
        "ssm_in_proj",
        "ssm_conv",
        "ssm_scan",
        "ssm_out_proj",
        "mlp_up",
        "mlp_down",
        "moe_router",
        "moe_experts_up",
        "moe_shared_up",
        "lm_head",
    ):
        assert expected in names
    assert not any(o.kind is OpKind.COMM for o in s.operators(**batch))
    one, two = s.operators(**batch, tp=1), s.operators(**batch, tp=2)
    by_name = {o.name: o for o in one}
    for o in two:
        if o.kind is OpKind.GEMM and o.name != "moe_router":  # the router is replicated
            assert o.flops == pytest.approx(by_name[o.name].flops / 2)
    comm = {o.name: o for o in two if o.kind is OpKind.COMM}
    T = 64 + 16 + 3
    # One all-reduce of T * hidden * 2 bytes after each of the 6 blocks, one after the embedding.
    assert comm["attention_allreduce"].comm_bytes == 1 * T * 64 * 2
    assert comm["ssm_allreduce"].comm_bytes == 2 * T * 64 * 2
    assert comm["embedding_allreduce"].comm_bytes == T * 64 * 2
    assert comm["lm_head_allgather"].comm_bytes == 5 * 256 * 2  # one logits row per sequence


def test_attention_bytes_and_kv_head_replication():
    s = spec("llama-3-8b")
    ctx = 1000
    att = op(s.operators(decode_contexts=[ctx], kv_dtype="fp8"), "attention")
    q = 32 * 128 * 2  # one query row, bf16
    kv_row = 2 * 8 * 128 * 1  # K and V of one token, fp8
    assert att.bytes_read == 32 * (q + (ctx + 1) * kv_row)
    assert att.bytes_written == 32 * (q + kv_row)
    # tp = 16 > 8 kv heads: each rank keeps ceil(8/16) = 1 kv head (replicated).
    att16 = op(s.operators(decode_contexts=[ctx], kv_dtype="fp8", tp=16), "attention")
    assert att16.bytes_read == 32 * (q / 16 + (ctx + 1) * 2 * 1 * 128)


def test_moe_reads_only_the_experts_hit():
    s = spec("mixtral-8x7b")
    expert_up = 4096 * 2 * 14336 * 2  # gate+up weights of one expert, bf16 bytes

    def up_weight_reads(tokens):
        o = op(s.operators(prefill_chunks=[(tokens, 0)]), "moe_experts_up")
        activations = tokens * 2 * 4096 * 2  # each token's input, once per chosen expert
        return (o.bytes_read - 32 * activations) / (32 * expert_up)

    assert up_weight_reads(1) == pytest.approx(2)  # one token: its top-2 experts
    # T tokens, uniform routing: 8 * (1 - (6/8)^T) distinct experts expected
    assert up_weight_reads(4) == pytest.approx(8 * (1 - 0.75**4))
    assert up_weight_reads(256) == pytest.approx(8)
    # FLOPs do not depend on routing: top-2 per token always
    flops = op(s.operators(prefill_chunks=[(10, 0)]), "moe_experts_up").flops
    assert flops == 32 * 2 * (10 * 2) * 4096 * 2 * 14336


def test_ssm_state_traffic_is_per_sequence():
    s = spec("marconi-hybrid-7b")
    scan = op(s.operators(decode_contexts=[10, 20, 30], ssm_dtype="float32"), "ssm_scan")
    state = 128 * 64 * 128 * 4
    # Per layer: read and write each of the 3 sequences' fp32 state once.
    assert scan.bytes_written == 24 * (3 * state + 3 * 8192 * 2)
    assert scan.bytes_read > 24 * 3 * state


def test_empty_and_bad_batches():
    s = spec("tiny-mixtral")
    assert s.operators() == [] and s.prefill_flops(0, 10) == 0
    with pytest.raises(ValueError, match="tp"):
        s.operators(decode_contexts=[1], tp=0)
    with pytest.raises(ValueError, match=">= 0"):
        s.operators(prefill_chunks=[(4, -1)])
    with pytest.raises(ValueError, match=">= 0"):
        s.prefill_flops(-1, 0)


# ---- parsing --------------------------------------------------------------------------------


def test_layer_kinds_of_the_hybrids():
    nem = spec("tiny-nemotron-h")  # "M-*-ME"
    assert [(lyr.mixer, lyr.mlp) for lyr in nem.layers] == [
        (Mixer.MAMBA2, MLPKind.NONE),
        (Mixer.NONE, MLPKind.DENSE),
        (Mixer.ATTENTION, MLPKind.NONE),
        (Mixer.NONE, MLPKind.DENSE),
        (Mixer.MAMBA2, MLPKind.NONE),
        (Mixer.NONE, MLPKind.MOE),
    ]
    assert not nem.mlp.gated and nem.moe.shared_intermediate_size == 64
    bam = spec("tiny-bamba")
    assert [lyr.mixer for lyr in bam.layers] == [
        Mixer.MAMBA2,
        Mixer.ATTENTION,
        Mixer.MAMBA2,
        Mixer.MAMBA2,
    ]
    assert all(lyr.mlp is MLPKind.DENSE for lyr in bam.layers) and bam.mlp.gated
    # transformers 5 spelling of the NemotronH pattern gives the same spec
    cfg = preset_config("tiny-nemotron-h")
    mapping = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    cfg["layers_block_type"] = [mapping[ch] for ch in cfg.pop("hybrid_override_pattern")]
    assert ModelSpec.from_hf_config(cfg, name="tiny-nemotron-h") == nem
    assert spec("qwen2-7b").attention.qkv_bias and spec("qwen3-8b").attention.qk_norm


def test_attention_free_model_has_no_kv():
    cfg = preset_config("tiny-nemotron-h")
    cfg["hybrid_override_pattern"] = "M-M-"
    s = ModelSpec.from_hf_config(cfg)
    assert s.attention is None and s.kv_bytes_per_token("bf16") == 0
    assert s.decode_flops(10**6) == s.decode_flops(0)  # SSM cost does not grow with context


# One transformers model per family, built on the meta device (no memory, no weights).
MODULE_CASES = [
    ("tiny-llama-125m", {}),
    (
        "tiny-llama-125m",
        {
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
            "num_hidden_layers": 2,
        },
    ),
    ("tiny-mixtral", {}),
    ("tiny-bamba", {}),
    ("tiny-bamba", {"mamba_proj_bias": True, "attention_bias": True, "mamba_conv_bias": False}),
    ("tiny-nemotron-h", {}),
    ("tiny-nemotron-h", {"moe_latent_size": 24, "mlp_bias": True, "use_bias": True}),
    ("tiny-mixtral", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}),
    (
        "tiny-mixtral",
        {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "head_dim": 32,
            "attention_bias": True,
        },
    ),
    ("tiny-mixtral", {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}),
]


@pytest.mark.parametrize(("preset", "overrides"), MODULE_CASES)
def test_parameter_count_equals_the_transformers_module(preset, overrides):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = preset_config(preset) | overrides
    hf = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    assert ModelSpec.from_hf_config(cfg).num_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("cls_name", "preset"),
    [
        ("LlamaConfig", "llama-3-8b"),
        ("MixtralConfig", "mixtral-8x7b"),
        ("BambaConfig", "bamba-9b"),
        ("NemotronHConfig", "marconi-hybrid-7b"),
        ("Qwen2Config", "qwen2-7b"),
        ("Qwen3Config", "qwen3-8b"),
        ("MistralConfig", "mistral-7b"),
    ],
)
def test_config_object_gives_the_same_spec_as_the_dict(cls_name, preset):
    transformers = pytest.importorskip("transformers")
    cfg = preset_config(preset)
    obj = getattr(transformers, cls_name)(**cfg)
    assert ModelSpec.from_hf_config(obj) == ModelSpec.from_hf_config(cfg)
    assert ModelSpec.from_hf_config(obj, name=preset) == spec(preset)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_missing_keys_take_the_transformers_defaults(model_type):
    transformers = pytest.importorskip("transformers")
    cls = transformers.CONFIG_MAPPING[model_type]
    extra = {"hybrid_override_pattern": "M-*E"} if model_type == "nemotron_h" else {}
    assert ModelSpec.from_hf_config(cls(**extra)) == ModelSpec.from_hf_config(
        {"model_type": model_type, **extra}
    )


def test_from_a_checkpoint_directory(tmp_path):
    ckpt = tmp_path / "my-llama"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(preset_config("tiny-llama-125m")))
    s = ModelSpec.from_hf_config(ckpt)
    assert s.name == "my-llama" and s.num_params == 124_668_672
    assert ModelSpec.from_hf_config(str(ckpt / "config.json")) == s
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ModelSpec.from_hf_config(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ModelSpec.from_hf_config(tmp_path / "bad.json")


def test_unknown_model_type_is_named():
    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*GPT2LMHeadModel.*llama"):
        ModelSpec.from_hf_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    # No model_type: a known architecture is enough.
    cfg = preset_config("tiny-mixtral")
    del cfg["model_type"]
    assert ModelSpec.from_hf_config(cfg).family == "mixtral"
    with pytest.raises(ValueError, match="unknown block types"):
        ModelSpec.from_hf_config({"model_type": "nemotron_h", "hybrid_override_pattern": "M-X"})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelSpec.from_hf_config({"model_type": "llama", "num_key_value_heads": 5})


def test_presets():
    assert set(preset_names()) == set(PRESETS) and len(PRESETS) == 14
    assert spec("Llama_3_8B") == spec("meta-llama/Meta-Llama-3-8B") == spec("llama-3-8b")
    with pytest.raises(ValueError, match="unknown preset 'gpt-j-6b'.*llama-3-8b"):
        ModelSpec.from_preset("gpt-j-6b")
    cfg = preset_config("bamba-9b")
    cfg["attn_layer_indices"].append(0)  # a fresh copy: the preset is untouched
    assert spec("bamba-9b").attention_layer_indices == (9, 18, 27)
    with pytest.raises(TypeError):
        PRESETS["bamba-9b"]["vocab_size"] = 1  # type: ignore[index]


def test_specs_are_frozen_and_hashable():
    s = spec("tiny-bamba")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.hidden_size = 1  # type: ignore[misc]
    assert len({s, spec("tiny-bamba"), spec("tiny-mixtral")}) == 2


def test_dtype_bytes():
    torch = pytest.importorskip("torch")
    assert dtype_bytes(torch.bfloat16) == 2 and dtype_bytes("torch.float32") == 4
    assert dtype_bytes("FP8") == 1 and dtype_bytes("int4") == 0.5 and dtype_bytes(2) == 2
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("float12")
    assert spec("llama-3-8b").weight_bytes("bf16") / GiB == pytest.approx(14.96, abs=0.01)
