"""CausalLM: the interface every architecture offers the engine, and the shared skeleton
(embedding, a stack of layers, final norm, LM head, cache allocation)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.kernels.attention import AttentionBackend, get_attention_backend
from core.kernels.fused_layer import DecodeStack, bind_decode_stack, decode_plan
from core.kernels.layer_ops import UsesCpuKernels
from core.kernels.linear import (
    Linear,
    WeightPack,
    linear,
    pack_contiguously,
    pack_weight,
    resolve_linear_backend,
)
from core.kernels.memory import huge_page_zeros

from .batch import ForwardBatch, ForwardContext
from .cache import KVCache, Slots, StatePool
from .config import ModelConfig
from .errors import ConfigError
from .layers import HFWeights, RMSNorm, RotaryEmbedding, hf_weights_of

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """A decoder-only language model that runs flattened varlen batches over paged caches.

    Contract with the engine:

    - ``forward(batch, kv_cache, state_pool)`` embeds ``batch.input_ids``, runs every layer and
      returns the final-normed hidden states ``[T, hidden]``. As side effects it writes each new
      token's K/V at ``batch.slot_mapping`` in every attention layer and, in hybrid models,
      leaves each sequence's conv and SSM state after its new tokens in its slot
      ``batch.state_indices[b]``. Nothing else in the caches changes.
    - ``compute_logits(hidden)`` applies the LM head to the rows that need logits (usually the
      last row of each sequence) and returns fp32 ``[N, vocab]``.
    - Caches come from ``allocate_kv_cache`` and ``allocate_state_pool``; their size in bytes
      per block / per slot from ``kv_cache_bytes_per_block`` / ``state_bytes_per_slot``.

    Subclasses build ``self.layers`` (modules called as ``layer(hidden, ctx)``) and say how
    their layers' weights are named in Hugging Face checkpoints (``hf_weights`` on each layer).
    Inference only: call under ``torch.inference_mode()``.
    """

    # HF model_type -> the transformers class name written to config.json "architectures"
    hf_architectures: ClassVar[dict[str, str]] = {}
    # the HF name of the final norm under "model."
    hf_final_norm: ClassVar[str] = "norm"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.hidden_act not in ("silu", "swish"):  # our MLPs are SiLU-gated
            raise ConfigError(
                f"config.json: hidden_act={config.hidden_act!r} is not supported (only silu)"
            )
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.build_layers(config))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Tied models reuse the embedding matrix as the LM head.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.linear_backend = "torch"  # set_linear_backend packs the weights for another
        # decode steps through one C++ call per layer where it can (core.kernels.fused_layer)
        self.fused_decode = True
        self._tied_head_pack: WeightPack | None = None
        # (the KV cache it was bound to, the bound layers or None: they cannot take it)
        self._stack_binding: tuple[KVCache, DecodeStack | None] | None = None
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope)
        self.attention_backend_name: str | None = None  # None: $SERVELAB_ATTENTION_BACKEND or auto
        self._backends: dict[tuple[str | None, torch.device], AttentionBackend] = {}

    # -- what subclasses provide ---------------------------------------------------------
    def build_layers(self, config: ModelConfig) -> list[nn.Module]:
        raise NotImplementedError

    # -- the forward ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def set_attention_backend(self, name: str | None) -> None:
        """Use the attention backend ``name`` (None: ``$SERVELAB_ATTENTION_BACKEND`` or auto)."""
        get_attention_backend(name, self.device)  # fail now on an unknown or unavailable name
        self.attention_backend_name = name

    def set_linear_backend(self, name: str | None) -> str:
        """Run every linear layer (and the LM head) on backend ``name`` (None:
        ``$SERVELAB_LINEAR_BACKEND`` or auto; see :mod:`core.kernels.linear`); returns the one
        chosen. Packs the current weights, so call it after loading them. ``"cpp"`` also runs
        the layers' small ops (norms, RoPE, activation) on the C++ kernels."""
        backend = resolve_linear_backend(name, self.device, self.dtype)
        linears = []
        for module in self.modules():  # forward order: layers, then the LM head
            if isinstance(module, Linear):
                module.set_backend(backend)
                linears.append(module)
            if isinstance(module, UsesCpuKernels):
                module.cpu_kernels = backend == "cpp"
        tied = self.lm_head is None
        self._tied_head_pack = pack_weight(self.embed_tokens.weight, backend) if tied else None
        pack_contiguously([m.packed for m in linears] + [self._tied_head_pack])
        self._stack_binding = None  # bound to the packs just replaced
        self.linear_backend = backend
        return backend

    def attention_backend(self) -> AttentionBackend:
        key = (self.attention_backend_name, self.device)
        if key not in self._backends:
            self._backends[key] = get_attention_backend(self.attention_backend_name, self.device)
        return self._backends[key]

    def forward(
        self,
        batch: ForwardBatch,
        kv_cache: KVCache | None = None,
        state_pool: StatePool | None = None,
    ) -> torch.Tensor:
        if self.config.attention_layers and kv_cache is None:
            raise ValueError("this model has attention layers: pass kv_cache")
        if self.config.mamba_layers and (state_pool is None or batch.state_indices is None):
            raise ValueError("this model has Mamba layers: pass state_pool and state_indices")
        ctx = ForwardContext(
            batch,
            kv_cache,
            state_pool,
            self.attention_backend(),
            rope=self.rotary_emb(batch.positions),
        )
        if self.fused_decode and self.linear_backend == "cpp":
            ctx.decode_plan = decode_plan(ctx, self.dtype)
        hidden = self.embed_tokens(batch.input_ids)
        stack = self._decode_stack(ctx)
        if stack is not None:
            hidden = stack.run(hidden, ctx.decode_plan)
        else:
            for layer in self.layers:
                hidden = layer(hidden, ctx)
        return self.norm(hidden)

    def _decode_stack(self, ctx: ForwardContext) -> DecodeStack | None:
        """The layers bound for one C++ call, when this step can take it (see
        :class:`~core.kernels.fused_layer.DecodeStack`); bound once per KV cache."""
        plan = ctx.decode_plan
        if plan is None or ctx.kv_cache is None:
            return None
        if self._stack_binding is None or self._stack_binding[0] is not ctx.kv_cache:
            stack = bind_decode_stack(self.layers, ctx.kv_cache, self.dtype)
            self._stack_binding = (ctx.kv_cache, stack)
        stack = self._stack_binding[1]
        return stack if stack is not None and stack.usable(plan) else None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        return linear(hidden, self.embed_tokens.weight, None, self._tied_head_pack).float()

    # -- caches --------------------------------------------------------------------------
    def allocate_kv_cache(
        self,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Zeroed K and V ``[num_blocks, block_size, num_kv_heads, head_dim]`` per attention
        layer (model dtype and device unless given), views of one buffer on huge pages where
        the system gives them (:mod:`core.kernels.memory`)."""
        c = self.config
        shape = (num_blocks, block_size, c.num_kv_heads, c.head_dim)
        dtype, device = dtype or self.dtype, device or self.device
        n = len(c.attention_layers)
        kv = huge_page_zeros((2, n, *shape), dtype, device)
        return KVCache(k=list(kv[0].unbind(0)), v=list(kv[1].unbind(0)))

    def allocate_state_pool(
        self,
        num_slots: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> StatePool:
        """Zeroed conv states ``[num_slots, conv_dim, d_conv - 1]`` (``dtype``, default the
        model's) and SSM states ``[num_slots, n_heads, head_dim, d_state]`` (``ssm_dtype``,
        fp32 by default: the recurrence accumulates over the whole sequence) per Mamba layer.
        Empty for models without Mamba layers."""
        m, n = self.config.mamba, len(self.config.mamba_layers)
        device = device or self.device
        if m is None or n == 0:
            return StatePool(conv=[], ssm=[])
        conv_shape = (num_slots, m.conv_dim, m.d_conv - 1)
        ssm_shape = (num_slots, m.n_heads, m.head_dim, m.d_state)
        conv_dtype = dtype or self.dtype
        return StatePool(
            conv=[torch.zeros(conv_shape, dtype=conv_dtype, device=device) for _ in range(n)],
            ssm=[torch.zeros(ssm_shape, dtype=ssm_dtype, device=device) for _ in range(n)],
        )

    @staticmethod
    def copy_state_slot(pool: StatePool, src: Slots, dst: Slots) -> None:
        """Copy state slot(s) ``src`` to ``dst`` in every Mamba layer: the engine's
        copy-on-write step before a sequence continues from a cached checkpoint."""
        pool.copy_(src, dst)

    def kv_cache_bytes_per_block(self, block_size: int, dtype: torch.dtype | None = None) -> int:
        """Bytes one block takes across all attention layers, K and V."""
        c = self.config
        itemsize = torch.empty(0, dtype=dtype or self.dtype).element_size()
        return 2 * len(c.attention_layers) * block_size * c.num_kv_heads * c.head_dim * itemsize

    def state_bytes_per_slot(
        self, dtype: torch.dtype | None = None, ssm_dtype: torch.dtype = torch.float32
    ) -> int:
        """Bytes one state slot takes across all Mamba layers (0 without Mamba layers)."""
        m = self.config.mamba
        if m is None:
            return 0
        conv_item = torch.empty(0, dtype=dtype or self.dtype).element_size()
        ssm_item = torch.empty(0, dtype=ssm_dtype).element_size()
        conv = m.conv_dim * (m.d_conv - 1) * conv_item
        ssm = m.n_heads * m.head_dim * m.d_state * ssm_item
        return len(self.config.mamba_layers) * (conv + ssm)

    # -- checkpoint names ----------------------------------------------------------------
    def hf_weight_map(self) -> HFWeights:
        """Each of our parameters -> the HF tensors that, concatenated along dim 0, form it."""
        out: HFWeights = {
            "embed_tokens.weight": [("model.embed_tokens.weight", None)],
            "norm.weight": [(f"model.{self.hf_final_norm}.weight", None)],
        }
        if self.lm_head is not None:
            out["lm_head.weight"] = [("lm_head.weight", None)]
        for i, layer in enumerate(self.layers):
            for name, parts in hf_weights_of(layer, f"model.layers.{i}.").items():
                out[f"layers.{i}.{name}"] = parts
        return out
