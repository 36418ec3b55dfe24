// Small-M linear layers (y = x W^T + b) for CPU decoding: weights packed once into groups of
// kGroup output rows stored k-major ([groups, K, kGroup]), so a tile of the product reads one
// contiguous weight stream and broadcasts each x value against kGroup outputs at once (no
// horizontal sums). Accumulates in fp32 for fp32 and bf16 weights; bf16 halves the bytes
// streamed, which is what bounds decoding.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "ops.h"
#include "vec.h"

namespace servelab {
namespace {

#if defined(__AVX512F__)
constexpr int kPanels = 4;  // 64 outputs per group: 4 zmm loads feed kRows x 4 FMAs per k
constexpr int kRows = 6;    // 24 accumulators + 4 weights + 1 broadcast <= 32 registers
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kPanels = 2;  // 32 outputs: 4 ymm
constexpr int kRows = 2;    // 8 ymm accumulators + 4 weights + 1 broadcast <= 16 registers
#else
constexpr int kPanels = 2;
constexpr int kRows = 4;
#endif
constexpr int kGroup = 16 * kPanels;

// acc[MR][kGroup] = x[MR rows, K] . w_group[K, kGroup]
template <typename W, int MR>
void tile(const float* x, int64_t ldx, const W* w, int64_t K, float* acc_out) {
  Vec16 acc[MR][kPanels];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) acc[i][j] = Vec16::zero();
  for (int64_t k = 0; k < K; ++k) {
    const W* wk = w + k * kGroup;
    Vec16 wv[kPanels];
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) wv[j] = Vec16::load(wk + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      Vec16 xb = Vec16::broadcast(x[i * ldx + k]);
#pragma GCC unroll 8
      for (int j = 0; j < kPanels; ++j) acc[i][j] = fma(xb, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kPanels; ++j) acc[i][j].store(acc_out + i * kGroup + 16 * j);
}

template <typename W, int... R>
void tile_rows(int mr, const float* x, int64_t ldx, const W* w, int64_t K, float* acc,
               std::integer_sequence<int, R...>) {
  ((mr == R + 1 ? tile<W, R + 1>(x, ldx, w, K, acc) : void()), ...);
}

template <typename W>
void run_linear(const float* x, int64_t ldx, const W* packed, const W* bias, W* out, int64_t M,
                int64_t N, int64_t K) {
  const int64_t groups = (N + kGroup - 1) / kGroup;
  // rows per task: all of them for decode-sized M (each weight group is streamed once); for
  // larger M, chunks of rows so that several threads share a group's work
  const int64_t chunk = M <= 8 * kRows ? M : 8 * kRows;
  const int64_t chunks = (M + chunk - 1) / chunk;
  // consecutive tasks share a weight group, so a thread re-reads it from its own cache
  at::parallel_for(0, groups * chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kRows * kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = t / chunks, m_end = std::min(M, (t % chunks + 1) * chunk);
      const W* wg = packed + g * K * kGroup;
      const int64_t n0 = g * kGroup, width = std::min<int64_t>(kGroup, N - n0);
      for (int64_t m0 = (t % chunks) * chunk; m0 < m_end; m0 += kRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kRows, m_end - m0));
        tile_rows<W>(mr, x + m0 * ldx, ldx, wg, K, acc, std::make_integer_sequence<int, kRows>{});
        for (int i = 0; i < mr; ++i) {
          W* o = out + (m0 + i) * N + n0;
          const float* a = acc + i * kGroup;
          for (int64_t c = 0; c < width; ++c)
            o[c] = static_cast<W>(bias ? a[c] + static_cast<float>(bias[n0 + c]) : a[c]);
        }
      }
    }
  });
}

}  // namespace

int64_t linear_group_width() { return kGroup; }

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "pack_linear_weight: weight must be [out, in], got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16,
              "pack_linear_weight: fp32 or bf16 weights only, got ", weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t groups = (N + kGroup - 1) / kGroup;
  auto padded = at::zeros({groups * kGroup, K}, weight.options());
  padded.narrow(0, 0, N).copy_(weight);
  // [groups, kGroup, K] -> [groups, K, kGroup]
  return padded.view({groups, kGroup, K}).transpose(1, 2).contiguous();
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "packed_linear: x must be [rows, in], got ", x.sizes());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kGroup && packed.is_contiguous(),
              "packed_linear: not a weight packed by pack_linear_weight");
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "packed_linear: x is ", x.scalar_type(),
              " but the weight is ", packed.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  TORCH_CHECK(packed.size(1) == K && packed.size(0) * kGroup >= N,
              "packed_linear: weight shape does not match x or out_features");
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  if (xf.stride(1) != 1) xf = xf.contiguous();
  const float* xp = xf.data_ptr<float>();
  const int64_t ldx = xf.stride(0);
  std::optional<at::Tensor> b;
  if (bias && bias->defined()) {
    TORCH_CHECK(bias->numel() == N && bias->scalar_type() == x.scalar_type(),
                "packed_linear: bias must be [out_features] in the weight's dtype");
    b = bias->contiguous();
  }
  if (x.scalar_type() == at::kFloat) {
    run_linear<float>(xp, ldx, packed.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr,
                      out.data_ptr<float>(), M, N, K);
  } else {
    using BF = c10::BFloat16;
    run_linear<BF>(xp, ldx, packed.data_ptr<BF>(), b ? b->data_ptr<BF>() : nullptr,
                   out.data_ptr<BF>(), M, N, K);
  }
  return out;
}

}  // namespace servelab
