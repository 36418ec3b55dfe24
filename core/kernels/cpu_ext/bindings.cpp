#include <pybind11/stl.h>
#include <torch/python.h>

#include "ops.h"
#include "vec.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("isa") = servelab::kIsa;
  m.def("linear_group_width", &servelab::linear_group_width,
        "output rows per packed weight group");
  m.def("linear_bf16_dot", &servelab::linear_bf16_dot,
        "whether bf16 weights are packed in k-pairs for AVX512-BF16 dot products");
  m.def("pack_linear_weight", &servelab::pack_linear_weight, "pack [out, in] for packed_linear");
  m.def("packed_linear", &servelab::packed_linear, "x @ W^T + b over a packed weight");
  m.def("write_kv", &servelab::write_kv, "store K/V rows at flat cache slots (-1: skip)");
  m.def("paged_decode_attention", &servelab::paged_decode_attention,
        "one-token attention over paged K/V, read in place through the block table");
  m.def("paged_multi_query_attention", &servelab::paged_multi_query_attention,
        "attention of a few new tokens per sequence (causal among them) over paged K/V, in place");
  m.def("paged_prefill_attention", &servelab::paged_prefill_attention,
        "tiled causal attention of prefill tokens over paged K/V, read in place");
  m.def("llama_decode_layer", &servelab::llama_decode_layer,
        "a Llama decoder layer for a decode step: the kernels below, in one call");
  m.def("llama_decode_stack", &servelab::llama_decode_stack,
        "every Llama decoder layer of a decode step, llama_decode_layer in a loop");
  m.def("rms_norm", &servelab::rms_norm, "RMSNorm over the last axis");
  m.def("add_rms_norm", &servelab::add_rms_norm, "(x + residual, RMSNorm(x + residual))");
  m.def("rotary_", &servelab::rotary_, "rotate-half RoPE in place");
  m.def("silu_mul", &servelab::silu_mul, "silu(gate) * up of a fused [.., 2I] projection");
}
