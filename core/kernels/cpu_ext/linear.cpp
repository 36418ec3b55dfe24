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
#include <cstring>
#include <type_traits>
#include <utility>

#include "ops.h"
#include "vec.h"

namespace servelab {
namespace {

constexpr int kGroup = 16 * kPanels;  // output rows per packed weight group
#if defined(__AVX512BF16__)
// bf16 weights packed in k-pairs ([groups, K/2, kGroup, 2]) for vdpbf16ps, which multiplies a
// broadcast pair of bf16 inputs into 16 outputs x 2 k per instruction (fp32 sums): half the
// instructions of widening both to fp32, so the kernel keeps up with oneDNN's bf16 path at
// 8-64 rows instead of only streaming at 1-4
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif

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

#if defined(__AVX512BF16__)
// acc[MR][kGroup] = x[MR rows, K] . w_group (k-pair layout), x and w bf16
template <int MR>
void tile_bf16_dot(const c10::BFloat16* x, int64_t ldx, const c10::BFloat16* w, int64_t K,
                   float* acc_out) {
  __m512 acc[MR][kPanels];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    const c10::BFloat16* wp = w + p * 2 * kGroup;
    __m512bh wv[kPanels];
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(wp + 32 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + i * ldx + 2 * p, sizeof(pair));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 8
      for (int j = 0; j < kPanels; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xb, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kPanels; ++j) _mm512_storeu_ps(acc_out + i * kGroup + 16 * j, acc[i][j]);
}

// The same product over the k-pair layout with each bf16 widened to fp32 and one FMA per k (a
// pair's even k is its low half shifted up, its odd k the high half masked): at 1-2 rows the
// weight stream, not the arithmetic, bounds the product, and this ran ~7% faster there than
// vdpbf16ps (which wins from 4 rows)
template <int MR>
void tile_bf16_pairs_widened(const c10::BFloat16* x, int64_t ldx, const c10::BFloat16* w,
                             int64_t K, float* acc_out) {
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  __m512 acc[MR][kPanels];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    const c10::BFloat16* wp = w + p * 2 * kGroup;
    __m512 even[kPanels], odd[kPanels];
#pragma GCC unroll 8
    for (int j = 0; j < kPanels; ++j) {
      const __m512i v = _mm512_loadu_si512(wp + 32 * j);
      even[j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      odd[j] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 x0 = _mm512_set1_ps(static_cast<float>(x[i * ldx + 2 * p]));
      const __m512 x1 = _mm512_set1_ps(static_cast<float>(x[i * ldx + 2 * p + 1]));
#pragma GCC unroll 8
      for (int j = 0; j < kPanels; ++j)
        acc[i][j] = _mm512_fmadd_ps(x1, odd[j], _mm512_fmadd_ps(x0, even[j], acc[i][j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kPanels; ++j) _mm512_storeu_ps(acc_out + i * kGroup + 16 * j, acc[i][j]);
}
#endif

// rows of a product up to which the k-pair layout is widened rather than dot-multiplied
constexpr int64_t kPairsWidenedRows = 2;

template <typename W, typename X, int... R>
void tile_rows(int mr, bool widened, const X* x, int64_t ldx, const W* w, int64_t K, float* acc,
               std::integer_sequence<int, R...>) {
  if constexpr (std::is_same_v<X, float>) {
    ((mr == R + 1 ? tile<W, R + 1>(x, ldx, w, K, acc) : void()), ...);
  } else {
#if defined(__AVX512BF16__)
    if (widened) {
      ((mr == R + 1 ? tile_bf16_pairs_widened<R + 1>(x, ldx, w, K, acc) : void()), ...);
    } else {
      ((mr == R + 1 ? tile_bf16_dot<R + 1>(x, ldx, w, K, acc) : void()), ...);
    }
#endif
  }
}

// X: float (x widened, weights in the [groups, K, kGroup] layout) or bf16 (x as is, weights in
// the k-pair layout); a weight group spans K * kGroup elements either way
template <typename W, typename X>
void run_linear(const X* x, int64_t ldx, const W* packed, const W* bias, W* out, int64_t M,
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
        tile_rows<W, X>(mr, M <= kPairsWidenedRows, x + m0 * ldx, ldx, wg, K, acc,
                        std::make_integer_sequence<int, kRows>{});
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

bool linear_bf16_dot() { return kBf16Dot; }

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "pack_linear_weight: weight must be [out, in], got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16,
              "pack_linear_weight: fp32 or bf16 weights only, got ", weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t groups = (N + kGroup - 1) / kGroup;
  auto padded = at::zeros({groups * kGroup, K}, weight.options());
  padded.narrow(0, 0, N).copy_(weight);
  if (kBf16Dot && weight.scalar_type() == at::kBFloat16 && K % 2 == 0) {
    // [groups, kGroup, K/2, 2] -> [groups, K/2, kGroup, 2], seen as [groups, K/2, 2 kGroup]
    return padded.view({groups, kGroup, K / 2, 2})
        .permute({0, 2, 1, 3})
        .contiguous()
        .view({groups, K / 2, 2 * kGroup});
  }
  // [groups, kGroup, K] -> [groups, K, kGroup]
  return padded.view({groups, kGroup, K}).transpose(1, 2).contiguous();
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "packed_linear: x must be [rows, in], got ", x.sizes());
  const bool pairs = packed.dim() == 3 && packed.size(2) == 2 * kGroup;  // the bf16 k-pair layout
  TORCH_CHECK(packed.dim() == 3 && (packed.size(2) == kGroup || pairs) && packed.is_contiguous(),
              "packed_linear: not a weight packed by pack_linear_weight");
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "packed_linear: x is ", x.scalar_type(),
              " but the weight is ", packed.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  TORCH_CHECK(packed.size(1) * (pairs ? 2 : 1) == K && packed.size(0) * kGroup >= N,
              "packed_linear: weight shape does not match x or out_features");
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  std::optional<at::Tensor> b;
  if (bias && bias->defined()) {
    TORCH_CHECK(bias->numel() == N && bias->scalar_type() == x.scalar_type(),
                "packed_linear: bias must be [out_features] in the weight's dtype");
    b = bias->contiguous();
  }
  using BF = c10::BFloat16;
  if (pairs) {  // x stays bf16: vdpbf16ps takes it as is
    TORCH_CHECK(kBf16Dot && x.scalar_type() == at::kBFloat16,
                "packed_linear: k-pair packs are bf16 and need AVX512-BF16");
    const at::Tensor xb = x.stride(1) == 1 ? x : x.contiguous();
    run_linear<BF, BF>(xb.data_ptr<BF>(), xb.stride(0), packed.data_ptr<BF>(),
                       b ? b->data_ptr<BF>() : nullptr, out.data_ptr<BF>(), M, N, K);
    return out;
  }
  at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  if (xf.stride(1) != 1) xf = xf.contiguous();
  const float* xp = xf.data_ptr<float>();
  const int64_t ldx = xf.stride(0);
  if (x.scalar_type() == at::kFloat) {
    run_linear<float, float>(xp, ldx, packed.data_ptr<float>(),
                             b ? b->data_ptr<float>() : nullptr, out.data_ptr<float>(), M, N, K);
  } else {
    run_linear<BF, float>(xp, ldx, packed.data_ptr<BF>(), b ? b->data_ptr<BF>() : nullptr,
                          out.data_ptr<BF>(), M, N, K);
  }
  return out;
}

}  // namespace servelab
