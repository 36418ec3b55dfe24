// The small per-layer ops of a decoder, each one pass over its rows instead of several torch
// ops: RMSNorm (with the residual add), rotate-half RoPE in place, silu(gate) * up. Each rounds
// to the storage dtype where the torch reference does (core/model/layers.py), so bf16 results
// agree with it up to the order of fp32 sums.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace servelab {
namespace {

// rows per parallel task: enough work (~16k elements) to pay for waking a thread
int64_t grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

template <typename T>
float sum_squares(const T* x, int64_t C) {
  Vec16 acc = Vec16::zero();
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    Vec16 v = Vec16::load(x + c);
    acc = fma(v, v, acc);
  }
  float s = acc.sum();
  for (; c < C; ++c) s += static_cast<float>(x[c]) * static_cast<float>(x[c]);
  return s;
}

// out = w * round_T(x * rsqrt(mean(x^2) + eps)), rounded to T (RMSNorm.forward)
template <typename T>
void norm_row(const T* x, const T* w, T* out, int64_t C, float eps) {
  const float r = 1.f / std::sqrt(sum_squares(x, C) / static_cast<float>(C) + eps);
  for (int64_t c = 0; c < C; ++c)
    out[c] = static_cast<T>(static_cast<float>(w[c]) * round_to<T>(static_cast<float>(x[c]) * r));
}

template <typename F>
void dispatch(at::ScalarType t, const char* op, F&& f) {
  if (t == at::kFloat) {
    f(static_cast<float*>(nullptr));
  } else {
    TORCH_CHECK(t == at::kBFloat16, op, ": fp32 or bf16 only, got ", t);
    f(static_cast<c10::BFloat16*>(nullptr));
  }
}

// x as [rows, last axis] with a dense last axis: a view when it can be (these ops take any
// leading axes and strides, so the Python side makes no reshapes of its own)
at::Tensor as_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one axis");
  at::Tensor rows = x.reshape({-1, x.size(-1)});
  return rows.size(1) > 1 && rows.stride(1) != 1 ? rows.contiguous() : rows;
}

at::Tensor norm_weight(const at::Tensor& w, const at::Tensor& x, const char* op) {
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1) && w.scalar_type() == x.scalar_type(), op,
              ": weight must be [C] in x's dtype");
  return w.contiguous();
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& w_in, double eps) {
  const at::Tensor x = as_rows(input, "rms_norm");
  const at::Tensor weight = norm_weight(w_in, input, "rms_norm");
  auto out = at::empty(input.sizes(), input.options());
  const int64_t C = x.size(1);
  dispatch(x.scalar_type(), "rms_norm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = x.data_ptr<T>();
    const T* w = weight.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, x.size(0), grain(C), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) norm_row(xp + i * x.stride(0), w, o + i * C, C, eps);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x_in,
                                                const at::Tensor& r_in, const at::Tensor& w_in,
                                                double eps) {
  TORCH_CHECK(x_in.sizes() == r_in.sizes() && x_in.scalar_type() == r_in.scalar_type(),
              "add_rms_norm: x and residual differ in shape or dtype");
  const at::Tensor x = as_rows(x_in, "add_rms_norm");
  const at::Tensor residual = as_rows(r_in, "add_rms_norm");
  const at::Tensor weight = norm_weight(w_in, x_in, "add_rms_norm");
  auto sum = at::empty(x_in.sizes(), x_in.options());
  auto out = at::empty(x_in.sizes(), x_in.options());
  const int64_t C = x.size(1);
  dispatch(x.scalar_type(), "add_rms_norm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* w = weight.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* rp = residual.data_ptr<T>();
    T* sp = sum.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, x.size(0), grain(C), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* a = xp + i * x.stride(0);
        const T* r = rp + i * residual.stride(0);
        T* s = sp + i * C;
        for (int64_t c = 0; c < C; ++c)
          s[c] = static_cast<T>(static_cast<float>(a[c]) + static_cast<float>(r[c]));
        norm_row(s, w, op + i * C, C, eps);
      }
    });
  });
  return {sum, out};
}

void rotary_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "rotary_: x must be [T, heads, head_dim]");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(0) &&
                  cos.size(1) <= x.size(2) && cos.size(1) % 2 == 0 &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                  cos.is_contiguous() && sin.is_contiguous(),
              "rotary_: cos/sin must be contiguous fp32 [T, rotary_dim] with an even rotary_dim");
  const int64_t heads = x.size(1), rot = cos.size(1), half = rot / 2;
  dispatch(x.scalar_type(), "rotary_", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* xp = x.data_ptr<T>();
    const float* cp = cos.data_ptr<float>();
    const float* sp = sin.data_ptr<float>();
    at::parallel_for(0, x.size(0), grain(heads * rot), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const float* c = cp + t * rot;
        const float* s = sp + t * rot;
        for (int64_t h = 0; h < heads; ++h) {
          T* p = xp + t * x.stride(0) + h * x.stride(1);
          for (int64_t i = 0; i < half; ++i) {
            // x * cos + rotate_half(x) * sin, each product and the sum rounded to T
            const float x1 = static_cast<float>(p[i]), x2 = static_cast<float>(p[i + half]);
            const float c1 = round_to<T>(c[i]), s1 = round_to<T>(s[i]);
            const float c2 = round_to<T>(c[i + half]), s2 = round_to<T>(s[i + half]);
            p[i] = static_cast<T>(round_to<T>(x1 * c1) + round_to<T>(-x2 * s1));
            p[i + half] = static_cast<T>(round_to<T>(x2 * c2) + round_to<T>(x1 * s2));
          }
        }
      }
    });
  });
}

at::Tensor silu_mul(const at::Tensor& input) {
  const at::Tensor gate_up = as_rows(input, "silu_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_mul: the last axis must be 2 * I");
  const int64_t I = gate_up.size(1) / 2;
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = I;
  auto out = at::empty(shape, input.options());
  dispatch(gate_up.scalar_type(), "silu_mul", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* gp = gate_up.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, gate_up.size(0), grain(I), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* g = gp + i * gate_up.stride(0);
        const T* u = g + I;
        T* o = op + i * I;
        alignas(64) float silu[16];
        for (int64_t c0 = 0; c0 < I; c0 += 16) {
          const int64_t w = std::min<int64_t>(16, I - c0);
          if (w == 16) {  // silu(x) = x / (1 + e^-x), 16 lanes at a time
            const Vec16 x = Vec16::load(g + c0);
            (x / (exp(Vec16::zero() - x) + Vec16::broadcast(1.f))).store(silu);
          } else {
            for (int64_t j = 0; j < w; ++j) {
              const float x = static_cast<float>(g[c0 + j]);
              silu[j] = x / (1.f + std::exp(-x));
            }
          }
          for (int64_t j = 0; j < w; ++j)
            o[c0 + j] = static_cast<T>(round_to<T>(silu[j]) * static_cast<float>(u[c0 + j]));
        }
      }
    });
  });
  return out;
}

}  // namespace servelab
