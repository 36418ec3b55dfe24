// A whole Llama-family decoder layer for a decode step in one call: the same kernels, in the
// same order and on the same intermediate tensors as the Python layer takes them one by one
// (core/model/llama.py, layers.py with the "cpp" backends), so the result is bit-identical to
// it; what goes away is a few dozen Python calls per layer (module calls, checks, bindings),
// which at batch 1 in bf16 added about a third to the time of streaming the weights.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "ops.h"

namespace servelab {

at::Tensor llama_decode_layer(const at::Tensor& h, const at::Tensor& input_norm, double eps,
                              const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                              const at::Tensor& o, const std::optional<at::Tensor>& o_bias,
                              const at::Tensor& post_norm, const at::Tensor& gate_up,
                              const at::Tensor& down, const std::vector<int64_t>& sizes,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& k_cache,
                              at::Tensor& v_cache, const at::Tensor& slots,
                              const at::Tensor& rows, const at::Tensor& blocks,
                              const at::Tensor& seq_lens, double scale, int64_t window) {
  // sizes: num_heads, num_kv_heads, head_dim, hidden, intermediate
  TORCH_CHECK(sizes.size() == 5, "llama_decode_layer: sizes must be 5 integers");
  const int64_t nh = sizes[0], nkv = sizes[1], hd = sizes[2], hidden = sizes[3],
                inter = sizes[4];
  TORCH_CHECK(h.dim() == 2 && h.size(1) == hidden && h.is_contiguous(),
              "llama_decode_layer: h must be a contiguous [T, hidden] tensor");
  const int64_t T = h.size(0), q_size = nh * hd, kv_size = nkv * hd;
  TORCH_CHECK(rows.numel() == T, "llama_decode_layer: one decode sequence per row");

  at::Tensor x = rms_norm(h, input_norm, eps);
  at::Tensor qkv_out = packed_linear(x, qkv, q_size + 2 * kv_size, qkv_bias);
  at::Tensor q = qkv_out.narrow(1, 0, q_size).view({T, nh, hd});
  at::Tensor k = qkv_out.narrow(1, q_size, kv_size).view({T, nkv, hd});
  at::Tensor v = qkv_out.narrow(1, q_size + kv_size, kv_size).view({T, nkv, hd});
  rotary_(q, cos, sin);
  rotary_(k, cos, sin);
  write_kv(k, v, k_cache, v_cache, slots);
  at::Tensor attn = at::empty({T, nh, hd}, q.options());
  paged_decode_attention(attn, q, k_cache, v_cache, rows, blocks, seq_lens, scale, window);
  at::Tensor o_out = packed_linear(attn.view({T, q_size}), o, hidden, o_bias);
  auto [h2, x2] = add_rms_norm(h, o_out, post_norm, eps);
  at::Tensor act = silu_mul(packed_linear(x2, gate_up, 2 * inter, std::nullopt));
  return at::add(h2, packed_linear(act, down, hidden, std::nullopt));
}

// Every layer of a model for one decode step: llama_decode_layer in a loop, so the step makes
// one call from Python instead of one per layer (each carried ~60 us of Python at batch 1).
// weights: per layer, kStackWeights entries in llama_decode_layer's order (input norm, qkv,
// qkv bias or None, o, o bias or None, post norm, gate_up, down); eps_scale: per layer eps,
// scale; windows: per layer sliding window (0: none).
at::Tensor llama_decode_stack(const at::Tensor& h,
                              const std::vector<std::optional<at::Tensor>>& weights,
                              std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches,
                              const std::vector<double>& eps_scale,
                              const std::vector<int64_t>& windows,
                              const std::vector<int64_t>& sizes, const at::Tensor& cos,
                              const at::Tensor& sin, const at::Tensor& slots,
                              const at::Tensor& rows, const at::Tensor& blocks,
                              const at::Tensor& seq_lens) {
  constexpr size_t kStackWeights = 8;
  const size_t n = k_caches.size();
  TORCH_CHECK(weights.size() == kStackWeights * n && v_caches.size() == n &&
                  eps_scale.size() == 2 * n && windows.size() == n,
              "llama_decode_stack: ", kStackWeights, " weights, 2 caches, eps, scale and window ",
              "per layer expected");
  for (size_t i = 0; i < weights.size(); ++i) {
    const size_t slot = i % kStackWeights;
    TORCH_CHECK(slot == 2 || slot == 4 || weights[i].has_value(),
                "llama_decode_stack: only the biases may be None (weight ", i, ")");
  }
  at::Tensor out = h;
  for (size_t l = 0; l < n; ++l) {
    const auto* w = weights.data() + kStackWeights * l;
    out = llama_decode_layer(out, *w[0], eps_scale[2 * l], *w[1], w[2], *w[3], w[4], *w[5],
                             *w[6], *w[7], sizes, cos, sin, k_caches[l], v_caches[l], slots,
                             rows, blocks, seq_lens, eps_scale[2 * l + 1], windows[l]);
  }
  return out;
}

}  // namespace servelab
