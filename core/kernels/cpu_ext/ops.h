// The operators of the servelab CPU extension; the Python side is core/kernels/cpu_ext/__init__.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace servelab {

// linear.cpp
int64_t linear_group_width();
bool linear_bf16_dot();
at::Tensor pack_linear_weight(const at::Tensor& weight);
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                            const std::optional<at::Tensor>& bias);

// attention.cpp
void write_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
              at::Tensor& v_cache, const at::Tensor& slots);
void paged_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& rows,
                            const at::Tensor& blocks, const at::Tensor& seq_lens, double scale,
                            int64_t window);
void paged_multi_query_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                                 const at::Tensor& v_cache, const at::Tensor& starts,
                                 const at::Tensor& query_lens, const at::Tensor& blocks,
                                 const at::Tensor& seq_lens, double scale, int64_t window);

// prefill_attention.cpp
void paged_prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& starts,
                             const at::Tensor& query_lens, const at::Tensor& blocks,
                             const at::Tensor& seq_lens, double scale, int64_t window);

// decode_layer.cpp
at::Tensor llama_decode_layer(const at::Tensor& h, const at::Tensor& input_norm, double eps,
                              const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                              const at::Tensor& o, const std::optional<at::Tensor>& o_bias,
                              const at::Tensor& post_norm, const at::Tensor& gate_up,
                              const at::Tensor& down, const std::vector<int64_t>& sizes,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& k_cache,
                              at::Tensor& v_cache, const at::Tensor& slots,
                              const at::Tensor& rows, const at::Tensor& blocks,
                              const at::Tensor& seq_lens, double scale, int64_t window);
at::Tensor llama_decode_stack(const at::Tensor& h,
                              const std::vector<std::optional<at::Tensor>>& weights,
                              std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches,
                              const std::vector<double>& eps_scale,
                              const std::vector<int64_t>& windows,
                              const std::vector<int64_t>& sizes, const at::Tensor& cos,
                              const at::Tensor& sin, const at::Tensor& slots,
                              const at::Tensor& rows, const at::Tensor& blocks,
                              const at::Tensor& seq_lens);

// layer_ops.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps);
void rotary_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor silu_mul(const at::Tensor& gate_up);

}  // namespace servelab
