"""Kernels: a torch reference for each (attention over paged KV, SSD scan), optional fast
kernels tested against it.

- :mod:`core.kernels.attention`: paged attention over flattened varlen batches, the
  :class:`AttentionBackend` contract and its registry (``SERVELAB_ATTENTION_BACKEND``).
- :mod:`core.kernels.linear`: ``F.linear``, a oneDNN path over prepacked weights and the C++
  small-M kernel for CPU (the :class:`Linear` layer every model uses;
  ``SERVELAB_LINEAR_BACKEND``). Its function ``linear`` is not re-exported here: that name
  stays the module's.
- :mod:`core.kernels.layer_ops`: RMSNorm, residual add + RMSNorm, RoPE, silu * up: the torch
  reference of each and its C++ kernel.
- :mod:`core.kernels.cpu_attention`: the ``"cpp"`` attention backend (decode attention read
  in place through the block table).
- :mod:`core.kernels.cpu_ext`: the C++ sources of those kernels and their loader (compiled on
  first use, cached under ``~/.cache/servelab/cpu_ext``).
- :mod:`core.kernels.ssd`: the Mamba2 chunked SSD scan, its recurrent step, and the causal
  conv1d with carried state.

Optional backends (Triton, CUDA) register themselves on import; import them here inside a
``try`` so machines without their dependencies still import ``core.kernels``.
"""

from .attention import (
    ATTENTION_BACKEND_ENV,
    AttentionBackend,
    DecodeGroup,
    GatherWorkspace,
    PagedAttentionMetadata,
    TorchPagedAttention,
    attention_backends,
    get_attention_backend,
    group_by_length,
    paged_attention,
    register_attention_backend,
)
from .linear import (
    LINEAR_BACKEND_ENV,
    Linear,
    PackedWeight,
    onednn_supported,
    resolve_linear_backend,
)
from .ssd import (
    causal_conv1d,
    causal_conv1d_step,
    ssd_chunk_scan,
    ssd_scan_naive,
    ssd_state_step,
)

__all__ = [
    "ATTENTION_BACKEND_ENV",
    "AttentionBackend",
    "DecodeGroup",
    "GatherWorkspace",
    "LINEAR_BACKEND_ENV",
    "Linear",
    "PackedWeight",
    "PagedAttentionMetadata",
    "TorchPagedAttention",
    "attention_backends",
    "causal_conv1d",
    "causal_conv1d_step",
    "get_attention_backend",
    "group_by_length",
    "onednn_supported",
    "paged_attention",
    "register_attention_backend",
    "resolve_linear_backend",
    "ssd_chunk_scan",
    "ssd_scan_naive",
    "ssd_state_step",
]
