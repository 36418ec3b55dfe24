// Decode attention over the paged KV cache, read in place through the block table (no gather
// into a padded copy): one new token per sequence, or a few (a speculative verify's k + 1,
// causal among themselves); and the K/V write. Layouts: core/kernels/attention.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace servelab {
namespace {

// Positions ahead whose K (V) row is prefetched: a sequence's blocks lie anywhere in the cache
// (wherever the free queue handed them out; scattered once earlier requests have come and
// gone), so the hardware prefetchers, which follow a stream within a block, stall at every
// block boundary; the block table says where the next rows are. Offline workload, 125M Llama,
// decode steps after a first run had scattered the blocks: 0.90x the time in bf16 with two
// threads, 0.94x with one, fp32 unchanged; with the blocks in order, unchanged (0.99x).
constexpr int64_t kPrefetchRows = 16;

template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64)
    __builtin_prefetch(p + b, 0, 3);
}

template <typename T>
float dot(const float* q, const T* k, int64_t D) {
  Vec16 acc = Vec16::zero();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) acc = fma(Vec16::load(q + d), Vec16::load(k + d), acc);
  float s = acc.sum();
  for (; d < D; ++d) s += q[d] * static_cast<float>(k[d]);
  return s;
}

// scores[g * n + t] = scale * q_g . k_t for the `group` query heads and the first n4 (a
// multiple of 4) positions, four at a time: one reduction tree for four dot products, each K
// row read once for all heads.
template <typename T, int DC>  // DC: head_dim / 16
void scores_block(const float* qs, const T* const* k, int64_t n4, int64_t n, int64_t group,
                  float scale, float* scores) {
  for (int64_t t = 0; t + 4 <= n4; t += 4) {
    for (int64_t j = t + kPrefetchRows; j < std::min(t + kPrefetchRows + 4, n); ++j)
      prefetch_row(k[j], DC * 16);
    for (int64_t g = 0; g < group; ++g) {
      const float* q = qs + g * DC * 16;
      Vec16 p[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        p[j] = Vec16::zero();
#pragma GCC unroll 8
        for (int c = 0; c < DC; ++c)
          p[j] = fma(Vec16::load(q + 16 * c), Vec16::load(k[t + j] + 16 * c), p[j]);
      }
      float* out = scores + g * n + t;
      sum4(p[0], p[1], p[2], p[3], out);
      for (int j = 0; j < 4; ++j) out[j] *= scale;
    }
  }
}

// acc_g = sum_t probs[g * n + t] * v_t, accumulators in registers
template <typename T, int DC>
void weighted_values(const float* probs, const T* const* v, int64_t n, int64_t group, float* acc) {
  for (int64_t g = 0; g < group; ++g) {
    Vec16 a[DC];
    for (int c = 0; c < DC; ++c) a[c] = Vec16::zero();
    const float* pg = probs + g * n;
    for (int64_t t = 0; t < n; ++t) {
      if (g == 0 && t + kPrefetchRows < n) prefetch_row(v[t + kPrefetchRows], DC * 16);  // later heads re-read from cache
      const Vec16 w = Vec16::broadcast(pg[t]);
#pragma GCC unroll 8
      for (int c = 0; c < DC; ++c) a[c] = fma(w, Vec16::load(v[t] + 16 * c), a[c]);
    }
    for (int c = 0; c < DC; ++c) a[c].store(acc + g * DC * 16 + 16 * c);
  }
}

template <typename T>
void axpy(float a, const T* v, float* acc, int64_t D) {
  const Vec16 av = Vec16::broadcast(a);
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) fma(av, Vec16::load(v + d), Vec16::load(acc + d)).store(acc + d);
  for (; d < D; ++d) acc[d] += a * static_cast<float>(v[d]);
}

// One task: sequence s, kv head h, its `qlen` new tokens (rows row .. row + qlen - 1; 1 for a
// decode step, k + 1 for a speculative verify) and the `group` query heads that share the kv
// head. The qlen * group query rows are scored together, so each K/V row is read once for all
// of them; query j (position len - qlen + j) sees keys up to its own position (causal among
// the new tokens) and, with a window W, only those past position - W.
template <typename T>
void attend(T* out, const T* q, int64_t q_row_stride, int64_t q_head_stride, int64_t o_row_stride,
            int64_t o_head_stride, const T* kc, const T* vc, int64_t block_size, int64_t kv_heads,
            int64_t D, int64_t group, int64_t h, int64_t row, int64_t qlen, const int64_t* blocks,
            int64_t len, float scale, int64_t window, std::vector<float>& scratch,
            std::pair<std::vector<const T*>, std::vector<const T*>>& rows) {
  const int64_t first_pos = len - qlen;  // position of query 0
  const int64_t lo = window > 0 ? std::max<int64_t>(0, first_pos + 1 - window) : 0, n = len - lo;
  const int64_t R = qlen * group;  // query rows: j * group + g
  scratch.resize(R * (n + 2 * D + 1));
  float* qs = scratch.data();   // [R, D] queries in fp32
  float* acc = qs + R * D;      // [R, D] weighted sums of V
  float* denom = acc + R * D;   // [R] softmax denominators
  float* scores = denom + R;    // [R, n]
  for (int64_t j = 0; j < qlen; ++j)
    for (int64_t g = 0; g < group; ++g) {
      const T* qg = q + (row + j) * q_row_stride + (h * group + g) * q_head_stride;
      float* to = qs + (j * group + g) * D;
      for (int64_t d = 0; d < D; ++d) to[d] = static_cast<float>(qg[d]);
    }
  // where each position's K and V rows of kv head h live
  std::vector<const T*>& krow = rows.first;
  std::vector<const T*>& vrow = rows.second;
  krow.resize(n);
  vrow.resize(n);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = lo + t;
    const int64_t off = ((blocks[p / block_size] * block_size + p % block_size) * kv_heads + h) * D;
    krow[t] = kc + off;
    vrow[t] = vc + off;
  }
  const int64_t n4 = D == 64 || D == 128 ? n / 4 * 4 : 0;  // positions the blocked path takes
  if (D == 64) scores_block<T, 4>(qs, krow.data(), n4, n, R, scale, scores);
  if (D == 128) scores_block<T, 8>(qs, krow.data(), n4, n, R, scale, scores);
  for (int64_t t = n4; t < n; ++t)
    for (int64_t r = 0; r < R; ++r) scores[r * n + t] = dot(qs + r * D, krow[t], D) * scale;
  for (int64_t r = 0; r < R; ++r) {  // softmax numerators in place; denominators at the end
    const int64_t pos = first_pos + r / group;
    // the keys this query sees, as indices into the n scored positions: [a, b)
    const int64_t a = window > 0 ? std::max<int64_t>(0, pos + 1 - window) - lo : 0;
    const int64_t b = pos + 1 - lo;
    float* s = scores + r * n;
    std::fill(s, s + a, 0.f);
    std::fill(s + b, s + n, 0.f);
    float m = -INFINITY;
    for (int64_t t = a; t < b; ++t) m = std::max(m, s[t]);
    const Vec16 mv = Vec16::broadcast(m);
    Vec16 sums = Vec16::zero();
    int64_t t = a;
    for (; t + 16 <= b; t += 16) {
      const Vec16 e = exp(Vec16::load(s + t) - mv);
      e.store(s + t);
      sums = sums + e;
    }
    float sum = sums.sum();
    for (; t < b; ++t) sum += (s[t] = std::exp(s[t] - m));
    denom[r] = sum;
  }
  if (D == 64) {
    weighted_values<T, 4>(scores, vrow.data(), n, R, acc);
  } else if (D == 128) {
    weighted_values<T, 8>(scores, vrow.data(), n, R, acc);
  } else {
    std::fill(acc, acc + R * D, 0.f);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < R; ++r) axpy(scores[r * n + t], vrow[t], acc + r * D, D);
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t j = r / group, g = r % group;
    T* og = out + (row + j) * o_row_stride + (h * group + g) * o_head_stride;
    const float inv = 1.f / denom[r];
    for (int64_t d = 0; d < D; ++d) og[d] = static_cast<T>(acc[r * D + d] * inv);
  }
}

template <typename T>
void copy_rows(const at::Tensor& src, at::Tensor& cache, const int64_t* slots, int64_t T_) {
  const int64_t heads = src.size(1), D = src.size(2);
  T* dst = cache.data_ptr<T>();
  const T* s = src.data_ptr<T>();
  const bool packed_row = src.stride(1) == D;  // the heads of a row are contiguous
  for (int64_t t = 0; t < T_; ++t) {
    if (slots[t] < 0) continue;
    const T* row = s + t * src.stride(0);
    T* to = dst + slots[t] * heads * D;
    if (packed_row) {
      std::memcpy(to, row, heads * D * sizeof(T));
    } else {
      for (int64_t h = 0; h < heads; ++h) std::memcpy(to + h * D, row + h * src.stride(1), D * sizeof(T));
    }
  }
}

void check_cache(const at::Tensor& c, const char* name) {
  TORCH_CHECK(c.dim() == 4 && c.is_contiguous(), name,
              " must be a contiguous [num_blocks, block_size, kv_heads, head_dim] cache");
}

}  // namespace

void write_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
              at::Tensor& v_cache, const at::Tensor& slots) {
  check_cache(k_cache, "k_cache");
  check_cache(v_cache, "v_cache");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.dim() == 1,
              "write_kv: slots must be a contiguous int64 vector");
  for (const auto* t : {&k, &v}) {
    TORCH_CHECK(t->dim() == 3 && t->stride(2) == 1 && t->size(0) == slots.size(0) &&
                    t->size(1) == k_cache.size(2) && t->size(2) == k_cache.size(3) &&
                    t->scalar_type() == k_cache.scalar_type(),
                "write_kv: k/v must be [T, kv_heads, head_dim] in the cache dtype, last axis dense");
  }
  const int64_t* s = slots.data_ptr<int64_t>();
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  for (int64_t t = 0; t < slots.size(0); ++t)
    TORCH_CHECK(s[t] < capacity, "write_kv: slot ", s[t], " is outside the cache");
  if (k.scalar_type() == at::kFloat) {
    copy_rows<float>(k, k_cache, s, slots.size(0));
    copy_rows<float>(v, v_cache, s, slots.size(0));
  } else {
    TORCH_CHECK(k.scalar_type() == at::kBFloat16, "write_kv: fp32 or bf16 only");
    copy_rows<c10::BFloat16>(k, k_cache, s, slots.size(0));
    copy_rows<c10::BFloat16>(v, v_cache, s, slots.size(0));
  }
}

namespace {

// Shared by both entry points: sequence i has query_lens[i] new tokens from row starts[i]
// (query_lens == nullptr: one each).
void run_paged_attention(const char* op, at::Tensor& out, const at::Tensor& q,
                         const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& starts, const int64_t* query_lens,
                         const at::Tensor& blocks, const at::Tensor& seq_lens, double scale,
                         int64_t window) {
  check_cache(k_cache, "k_cache");
  check_cache(v_cache, "v_cache");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && out.dim() == 3 && out.stride(2) == 1 &&
                  out.sizes() == q.sizes(),
              op, ": q and out must be [T, heads, head_dim], last axis dense");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && out.scalar_type() == q.scalar_type() &&
                  v_cache.scalar_type() == q.scalar_type(),
              op, ": q, out and the caches must share one dtype");
  const int64_t n = starts.numel(), heads = q.size(1), D = q.size(2);
  const int64_t kv_heads = k_cache.size(2), block_size = k_cache.size(1);
  TORCH_CHECK(heads % kv_heads == 0 && k_cache.size(3) == D, op, ": head shapes");
  TORCH_CHECK(starts.scalar_type() == at::kLong && blocks.scalar_type() == at::kLong &&
                  seq_lens.scalar_type() == at::kLong && starts.is_contiguous() &&
                  blocks.is_contiguous() && seq_lens.is_contiguous() && blocks.dim() == 2 &&
                  blocks.size(0) == n && seq_lens.numel() == n,
              op, ": rows [n], blocks [n, max_blocks], seq_lens [n], int64");
  const int64_t* r = starts.data_ptr<int64_t>();
  const int64_t* b = blocks.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t nb = blocks.size(1), num_blocks = k_cache.size(0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t ql = query_lens ? query_lens[i] : 1;
    TORCH_CHECK(ql >= 1 && lens[i] >= ql && lens[i] <= nb * block_size && r[i] >= 0 &&
                    r[i] + ql <= q.size(0),
                op, ": sequence ", i, " has length ", lens[i], " for ", nb, " blocks of ",
                block_size, " (row ", r[i], ", ", ql, " new tokens)");
    for (int64_t j = 0; j < (lens[i] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(b[i * nb + j] >= 0 && b[i * nb + j] < num_blocks, op, ": block ",
                  b[i * nb + j], " out of range");
  }
  const int64_t group = heads / kv_heads;
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    at::parallel_for(0, n * kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch;
      std::pair<std::vector<const T*>, std::vector<const T*>> kv_rows;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / kv_heads, h = task % kv_heads;
        attend<T>(out.data_ptr<T>(), q.data_ptr<T>(), q.stride(0), q.stride(1), out.stride(0),
                  out.stride(1), k_cache.data_ptr<T>(), v_cache.data_ptr<T>(), block_size,
                  kv_heads, D, group, h, r[i], query_lens ? query_lens[i] : 1, b + i * nb,
                  lens[i], static_cast<float>(scale), window, scratch, kv_rows);
      }
    });
  };
  if (q.scalar_type() == at::kFloat) {
    run(static_cast<float*>(nullptr));
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, op, ": fp32 or bf16 only");
    run(static_cast<c10::BFloat16*>(nullptr));
  }
}

}  // namespace

void paged_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& rows,
                            const at::Tensor& blocks, const at::Tensor& seq_lens, double scale,
                            int64_t window) {
  run_paged_attention("paged_decode_attention", out, q, k_cache, v_cache, rows, nullptr, blocks,
                      seq_lens, scale, window);
}

void paged_multi_query_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                                 const at::Tensor& v_cache, const at::Tensor& starts,
                                 const at::Tensor& query_lens, const at::Tensor& blocks,
                                 const at::Tensor& seq_lens, double scale, int64_t window) {
  TORCH_CHECK(query_lens.scalar_type() == at::kLong && query_lens.is_contiguous() &&
                  query_lens.numel() == starts.numel(),
              "paged_multi_query_attention: query_lens must be [n] int64");
  run_paged_attention("paged_multi_query_attention", out, q, k_cache, v_cache, starts,
                      query_lens.data_ptr<int64_t>(), blocks, seq_lens, scale, window);
}

}  // namespace servelab
