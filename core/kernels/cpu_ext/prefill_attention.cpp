// Prefill attention over the paged KV cache, read in place through the block table: the new
// tokens of each sequence (a prompt, a chunk of one, a prompt after a prefix-cache hit) against
// all its keys, causal bottom-right aligned, optionally windowed. FlashAttention-style: a task
// is (sequence, kv head, block of query positions) with all the query heads of that kv head;
// it walks its keys in tiles, S = Q K^T and O += P V are register-blocked outer products
// (broadcast values times 16-wide vectors, no horizontal sums), and the softmax is online in
// fp32. Layouts: core/kernels/attention.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace servelab {
namespace {

// Keys per tile, and output columns per pass of O += P V (head_dim is padded to a multiple).
constexpr int64_t kTile = 16 * kPanels;
// Query rows (positions x query heads of a kv head) per task: enough rows that the transpose
// of each K tile is a small part of the products it feeds, few enough that Q and O of a task
// stay in L2 and that a batch splits into many tasks for the threads to share.
constexpr int64_t kTaskRows = 384;

// out[i, 0:16 NP] = (kAccumulate ? alpha[i] * out[i, 0:16 NP] : 0) + sum_k x[i, k] w[k, 0:16 NP]
template <int MR, int NP, bool kAccumulate>
void tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* out,
          int64_t ldo, const float* alpha) {
  Vec16 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const Vec16 a = Vec16::broadcast(kAccumulate ? alpha[i] : 0.f);
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j)
      acc[i][j] = kAccumulate ? Vec16::load(out + i * ldo + 16 * j) * a : Vec16::zero();
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec16 wv[NP];
#pragma GCC unroll 8
    for (int j = 0; j < NP; ++j) wv[j] = Vec16::load(w + k * ldw + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const Vec16 xb = Vec16::broadcast(x[i * ldx + k]);
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) acc[i][j] = fma(xb, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NP; ++j) acc[i][j].store(out + i * ldo + 16 * j);
}

// tile<> for a run-time number of rows (mr <= kRows) and of 16-lane panels (np <= kPanels)
template <bool kAccumulate, int NP, int... R>
void tile_rows(int mr, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K,
               float* out, int64_t ldo, const float* alpha, std::integer_sequence<int, R...>) {
  ((mr == R + 1 ? tile<R + 1, NP, kAccumulate>(x, ldx, w, ldw, K, out, ldo, alpha) : void()),
   ...);
}
template <bool kAccumulate, int... P>
void tile_any(int np, int mr, const float* x, int64_t ldx, const float* w, int64_t ldw,
              int64_t K, float* out, int64_t ldo, const float* alpha,
              std::integer_sequence<int, P...>) {
  ((np == P + 1 ? tile_rows<kAccumulate, P + 1>(mr, x, ldx, w, ldw, K, out, ldo, alpha,
                                                 std::make_integer_sequence<int, kRows>{})
                : void()),
   ...);
}

// Elementwise max (the one operation vec.h does not offer).
inline Vec16 max(Vec16 a, Vec16 b) {
#if defined(__AVX512F__)
  return {_mm512_max_ps(a.v, b.v)};
#elif defined(__AVX2__) && defined(__FMA__)
  return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)};
#else
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
  return r;
#endif
}

struct Task {
  int64_t seq, head, q0, q1;  // kv head `head` of sequence `seq`, its new tokens q0 .. q1 - 1
  int64_t cost;               // query rows x keys visited, for ordering
};

// What every task reads; pointers into the validated tensors.
template <typename T>
struct Batch {
  T* out;
  const T* q;
  int64_t q_row, q_head, o_row, o_head;  // strides
  const T* k_cache;
  const T* v_cache;
  int64_t block_size, kv_heads, D, Dp, group;
  const int64_t* starts;
  const int64_t* query_lens;
  const int64_t* blocks;
  int64_t blocks_stride;
  const int64_t* seq_lens;
  float scale;
  int64_t window;
};

// Per-thread buffers, all fp32.
struct Workspace {
  std::vector<float> q;      // [R, D] queries of the task, times the scale
  std::vector<float> o;      // [R, Dp] unnormalized outputs
  std::vector<float> m, l;   // [R] running max and denominator of each row's softmax
  std::vector<float> kt;     // [D, kTile] the K tile, transposed
  std::vector<float> vt;     // [kTile, Dp] the V tile (columns past D stay zero)
  std::vector<float> s;      // [kRows, kTile] scores, then probabilities, of one row tile
  std::vector<float> alpha;  // [kRows] rescale of each row's O for the tile's new max
};

// 0/1 lanes for masking keys [lo, hi) of a tile in registers: the 16 floats at
// from + kTile - lo + 16 j are 1 where 16 j + lane >= lo, at until + kTile - hi + 16 j where
// 16 j + lane < hi. (Scalar stores into a row read back as vectors would stall the loads.)
struct KeyMasks {
  float from[2 * kTile], until[2 * kTile];
  KeyMasks() {
    for (int64_t i = 0; i < 2 * kTile; ++i) {
      from[i] = i >= kTile ? 1.f : 0.f;
      until[i] = i < kTile ? 1.f : 0.f;
    }
  }
};
const KeyMasks kKeyMasks;

// One row's online-softmax step over keys [lo, hi) of the tile held in s: turns s into
// probabilities against the updated max (zero outside [lo, hi)), updates m and l, and returns
// the factor the row's O must be rescaled by.
float softmax_step(float* s, int64_t lo, int64_t hi, float& m, float& l) {
  if (lo >= hi) {  // the row sees no key of this tile
    for (int j = 0; j < kPanels; ++j) Vec16::zero().store(s + 16 * j);
    return 1.f;
  }
  const bool partial = lo > 0 || hi < kTile;
  Vec16 v[kPanels], mask[kPanels];
  for (int j = 0; j < kPanels; ++j) {
    v[j] = Vec16::load(s + 16 * j);
    if (partial) {  // masked keys: -3e38 for the max, zero after the exp
      mask[j] = Vec16::load(kKeyMasks.from + kTile - lo + 16 * j) *
                Vec16::load(kKeyMasks.until + kTile - hi + 16 * j);
      v[j] = fma(mask[j] - Vec16::broadcast(1.f), Vec16::broadcast(3e38f), v[j]);
    }
  }
  Vec16 mv = v[0];
  for (int j = 1; j < kPanels; ++j) mv = max(mv, v[j]);
  const float m_new = std::max(m, mv.max());
  const float alpha = std::exp(m - m_new);  // 0 on the first tile (m = -inf)
  const Vec16 mb = Vec16::broadcast(m_new);
  Vec16 sums = Vec16::zero();
  for (int j = 0; j < kPanels; ++j) {
    Vec16 e = exp(v[j] - mb);
    if (partial) e = e * mask[j];
    e.store(s + 16 * j);
    sums = sums + e;
  }
  l = l * alpha + sums.sum();
  m = m_new;
  return alpha;
}

template <typename T>
void attend_task(const Task& task, const Batch<T>& b, Workspace& ws) {
  const int64_t D = b.D, Dp = b.Dp, group = b.group, h = task.head;
  const int64_t qlen = b.query_lens[task.seq], len = b.seq_lens[task.seq];
  const int64_t row0 = b.starts[task.seq] + task.q0;  // token row of the task's first query
  const int64_t pos0 = len - qlen + task.q0;          // and its position in the sequence
  const int64_t R = (task.q1 - task.q0) * group;      // rows r = j * group + g
  const int64_t* table = b.blocks + task.seq * b.blocks_stride;
  float* qs = ws.q.data();
  float* o = ws.o.data();
  for (int64_t r = 0; r < R; ++r) {
    const T* src = b.q + (row0 + r / group) * b.q_row + (h * group + r % group) * b.q_head;
    for (int64_t d = 0; d < D; ++d) qs[r * D + d] = static_cast<float>(src[d]) * b.scale;
  }
  std::fill(o, o + R * Dp, 0.f);
  std::fill(ws.m.begin(), ws.m.begin() + R, -INFINITY);
  std::fill(ws.l.begin(), ws.l.begin() + R, 0.f);
  // keys [a, e) of position p: a = max(0, p - W + 1) with a window W, else 0; e = p + 1
  auto first_key = [&](int64_t p) {
    return b.window > 0 ? std::max<int64_t>(0, p - b.window + 1) : int64_t{0};
  };
  auto offset = [&](int64_t p) {  // of position p's row of kv head h in the caches
    return ((table[p / b.block_size] * b.block_size + p % b.block_size) * b.kv_heads + h) * D;
  };
  const int64_t pos_last = pos0 + task.q1 - task.q0 - 1;
  const int64_t key_end = pos_last + 1;
  for (int64_t k0 = first_key(pos0); k0 < key_end; k0 += kTile) {
    const int64_t nk = std::min(kTile, key_end - k0);
    float* kt = ws.kt.data();
    float* vt = ws.vt.data();
    for (int64_t t = 0; t < nk; ++t) {
      const int64_t off = offset(k0 + t);
      const T* kr = b.k_cache + off;
      const T* vr = b.v_cache + off;
      for (int64_t d = 0; d < D; ++d) kt[d * kTile + t] = static_cast<float>(kr[d]);
      for (int64_t d = 0; d < D; ++d) vt[t * Dp + d] = static_cast<float>(vr[d]);
    }
    // the next tile's K/V rows are scattered over the cache: fetch them while this one is used
    for (int64_t p = k0 + kTile; p < std::min(k0 + 2 * kTile, key_end); ++p) {
      const char* kr = reinterpret_cast<const char*>(b.k_cache + offset(p));
      const char* vr = reinterpret_cast<const char*>(b.v_cache + offset(p));
      for (int64_t byte = 0; byte < D * static_cast<int64_t>(sizeof(T)); byte += 64) {
        __builtin_prefetch(kr + byte);
        __builtin_prefetch(vr + byte);
      }
    }
    if (nk < kTile)  // keys past the end score 0 and are masked, but must not be NaN
      for (int64_t d = 0; d < D; ++d) std::fill(kt + d * kTile + nk, kt + (d + 1) * kTile, 0.f);
    for (int64_t r0 = 0; r0 < R; r0 += kRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kRows, R - r0));
      const int64_t p_lo = pos0 + r0 / group, p_hi = pos0 + (r0 + mr - 1) / group;
      if (p_hi < k0 || first_key(p_lo) >= k0 + nk) continue;  // no row sees this tile
      // the keys some row of the tile sees: [klo, khi) of this tile
      const int64_t klo = std::max(first_key(p_lo), k0) - k0;
      const int64_t khi = std::min(p_hi + 1, k0 + nk) - k0;
      const int64_t plo = klo / 16, phi = (khi + 15) / 16;  // S panels to compute
      float* s = ws.s.data();
      tile_any<false>(static_cast<int>(phi - plo), mr, qs + r0 * D, D, kt + 16 * plo, kTile, D,
                      s + 16 * plo, kTile, nullptr, std::make_integer_sequence<int, kPanels>{});
      for (int i = 0; i < mr; ++i) {
        const int64_t r = r0 + i, p = pos0 + r / group;
        const int64_t lo = std::max(first_key(p), k0) - k0, hi = std::min(p + 1, k0 + nk) - k0;
        ws.alpha[i] = softmax_step(s + i * kTile, lo, hi, ws.m[r], ws.l[r]);
      }
      for (int64_t c = 0; c < Dp; c += kTile)
        tile_rows<true, kPanels>(mr, s + klo, kTile, vt + klo * Dp + c, Dp, khi - klo,
                                 o + r0 * Dp + c, Dp, ws.alpha.data(),
                                 std::make_integer_sequence<int, kRows>{});
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T* dst = b.out + (row0 + r / group) * b.o_row + (h * group + r % group) * b.o_head;
    const float inv = 1.f / ws.l[r];
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(o[r * Dp + d] * inv);
  }
}

template <typename T>
void run(const Batch<T>& b, int64_t n) {
  // query positions per task: all `group` heads of each, about kTaskRows rows in all
  const int64_t block = std::max<int64_t>(1, kTaskRows / b.group);
  std::vector<Task> tasks;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t qlen = b.query_lens[i], first = b.seq_lens[i] - qlen;
    for (int64_t q0 = 0; q0 < qlen; q0 += block) {
      const int64_t q1 = std::min(qlen, q0 + block);
      const int64_t keys_end = first + q1;
      const int64_t keys_begin = b.window > 0 ? std::max<int64_t>(0, first + q0 - b.window + 1) : 0;
      for (int64_t h = 0; h < b.kv_heads; ++h)
        tasks.push_back({i, h, q0, q1, (q1 - q0) * (keys_end - keys_begin)});
    }
  }
  if (tasks.empty()) return;
  // Causality makes tasks of very different cost: the threads take them largest first from
  // one shared counter, so the small ones fill in at the end and the threads finish together
  // (also when one of them was descheduled for a while).
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& x, const Task& y) { return x.cost > y.cost; });
  const int64_t rows = block * b.group;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), tasks.size());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Workspace ws;
    ws.q.resize(rows * b.D);
    ws.o.resize(rows * b.Dp);
    ws.m.resize(rows);
    ws.l.resize(rows);
    ws.kt.resize(b.D * kTile);
    ws.vt.assign(kTile * b.Dp, 0.f);
    ws.s.resize(kRows * kTile);
    ws.alpha.resize(kRows);
    for (int64_t t; (t = next.fetch_add(1)) < static_cast<int64_t>(tasks.size());)
      attend_task<T>(tasks[t], b, ws);
  });
}

}  // namespace

void paged_prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& starts,
                             const at::Tensor& query_lens, const at::Tensor& blocks,
                             const at::Tensor& seq_lens, double scale, int64_t window) {
  constexpr const char* op = "paged_prefill_attention";
  for (const auto* c : {&k_cache, &v_cache})
    TORCH_CHECK(c->dim() == 4 && c->is_contiguous() && c->sizes() == k_cache.sizes(), op,
                ": caches must be contiguous [num_blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && out.dim() == 3 && out.stride(2) == 1 &&
                  out.sizes() == q.sizes(),
              op, ": q and out must be [T, heads, head_dim], last axis dense");
  TORCH_CHECK(out.scalar_type() == q.scalar_type() && k_cache.scalar_type() == q.scalar_type() &&
                  v_cache.scalar_type() == q.scalar_type(),
              op, ": q, out and the caches must share one dtype");
  const int64_t n = starts.numel(), heads = q.size(1), D = q.size(2);
  const int64_t kv_heads = k_cache.size(2), block_size = k_cache.size(1);
  TORCH_CHECK(D > 0 && heads % kv_heads == 0 && k_cache.size(3) == D, op, ": ", heads,
              " query heads of ", D, " for a cache of ", kv_heads, " kv heads of ",
              k_cache.size(3));
  for (const auto* t : {&starts, &query_lens, &seq_lens})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->dim() == 1 &&
                    t->numel() == n,
                op, ": starts, query_lens and seq_lens must be [n] int64");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && blocks.is_contiguous() && blocks.dim() == 2 &&
                  blocks.size(0) == n,
              op, ": blocks must be [n, max_blocks] int64");
  const int64_t* r = starts.data_ptr<int64_t>();
  const int64_t* ql = query_lens.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t* bt = blocks.data_ptr<int64_t>();
  const int64_t nb = blocks.size(1), num_blocks = k_cache.size(0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ql[i] >= 1 && lens[i] >= ql[i] && lens[i] <= nb * block_size && r[i] >= 0 &&
                    r[i] + ql[i] <= q.size(0),
                op, ": sequence ", i, " has length ", lens[i], " for ", nb, " blocks of ",
                block_size, " (row ", r[i], ", ", ql[i], " new tokens)");
    for (int64_t j = 0; j < (lens[i] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(bt[i * nb + j] >= 0 && bt[i * nb + j] < num_blocks, op, ": block ",
                  bt[i * nb + j], " of sequence ", i, " is out of range");
  }
  auto dispatch = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const Batch<T> b{out.data_ptr<T>(),
                     q.data_ptr<T>(),
                     q.stride(0),
                     q.stride(1),
                     out.stride(0),
                     out.stride(1),
                     k_cache.data_ptr<T>(),
                     v_cache.data_ptr<T>(),
                     block_size,
                     kv_heads,
                     D,
                     (D + kTile - 1) / kTile * kTile,
                     heads / kv_heads,
                     r,
                     ql,
                     bt,
                     nb,
                     lens,
                     static_cast<float>(scale),
                     window};
    run<T>(b, n);
  };
  if (q.scalar_type() == at::kFloat) {
    dispatch(static_cast<float*>(nullptr));
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, op, ": fp32 or bf16 only");
    dispatch(static_cast<c10::BFloat16*>(nullptr));
  }
}

}  // namespace servelab
