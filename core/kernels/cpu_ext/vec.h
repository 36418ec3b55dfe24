// Sixteen fp32 lanes on whatever vector ISA the compiler targets (-march=native): one zmm
// register with AVX-512, two ymm with AVX2+FMA, a plain array (left to the auto-vectorizer)
// elsewhere. Kernels are written once against Vec16; the build flags pick the ISA.
#pragma once

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace servelab {

#if defined(__AVX512F__)
inline constexpr const char* kIsa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr const char* kIsa = "avx2";
#else
inline constexpr const char* kIsa = "generic";
#endif

// The register block of an outer-product kernel (linear.cpp, prefill_attention.cpp): kRows
// broadcast rows times kPanels Vec16 columns of accumulators, sized to the register file.
#if defined(__AVX512F__)
inline constexpr int kPanels = 4;  // 64 columns: 4 zmm loads feed kRows x 4 FMAs per step
inline constexpr int kRows = 6;    // 24 accumulators + 4 loads + 1 broadcast <= 32 registers
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int kPanels = 2;  // 32 columns: 4 ymm
inline constexpr int kRows = 2;    // 8 ymm accumulators + 4 loads + 1 broadcast <= 16 registers
#else
inline constexpr int kPanels = 2;
inline constexpr int kRows = 4;
#endif

#if defined(__AVX512F__)

struct Vec16 {
  __m512 v;
  static Vec16 zero() { return {_mm512_setzero_ps()}; }
  static Vec16 broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static Vec16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec16 load(const c10::BFloat16* p) {
    // bf16 is the high half of an fp32: widen to 32 bits and shift into place (exact)
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  float sum() const { return _mm512_reduce_add_ps(v); }
  float max() const { return _mm512_reduce_max_ps(v); }
};
inline Vec16 fma(Vec16 a, Vec16 b, Vec16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec16 operator*(Vec16 a, Vec16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec16 operator+(Vec16 a, Vec16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec16 operator-(Vec16 a, Vec16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec16 operator/(Vec16 a, Vec16 b) { return {_mm512_div_ps(a.v, b.v)}; }
// out[0..3] = the sums of a, b, c, d (one reduction tree for four dot products)
inline void sum4(Vec16 a, Vec16 b, Vec16 c, Vec16 d, float* out) {
  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a.v, b.v), _mm512_unpackhi_ps(a.v, b.v));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c.v, d.v), _mm512_unpackhi_ps(c.v, d.v));
  // per 128-bit lane: [a, b, c, d] partial sums
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 s2 = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, _MM_SHUFFLE(3, 2, 3, 2)));
  _mm_storeu_ps(out, _mm_add_ps(_mm512_castps512_ps128(s2), _mm512_extractf32x4_ps(s2, 1)));
}
inline Vec16 clamp(Vec16 x, float lo, float hi) {
  return {_mm512_min_ps(_mm512_max_ps(x.v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi))};
}
inline Vec16 round_nearest(Vec16 x) {
  return {_mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// 2^n for integral n in [-126, 127]: the exponent field alone
inline Vec16 exp2_int(Vec16 n) {
  __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(e, 23))};
}

#elif defined(__AVX2__) && defined(__FMA__)

struct Vec16 {
  __m256 lo, hi;
  static Vec16 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static Vec16 broadcast(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
  static Vec16 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static Vec16 load(const c10::BFloat16* p) {
    auto widen = [](const c10::BFloat16* q) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    };
    return {widen(p), widen(p + 8)};
  }
  void store(float* p) const {
    _mm256_storeu_ps(p, lo);
    _mm256_storeu_ps(p + 8, hi);
  }
  float sum() const {
    __m256 s = _mm256_add_ps(lo, hi);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  float max() const {
    alignas(32) float t[16];
    store(t);
    float m = t[0];
    for (int i = 1; i < 16; ++i) m = t[i] > m ? t[i] : m;
    return m;
  }
};
inline Vec16 fma(Vec16 a, Vec16 b, Vec16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline Vec16 operator*(Vec16 a, Vec16 b) {
  return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}
inline Vec16 operator+(Vec16 a, Vec16 b) {
  return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
inline Vec16 operator-(Vec16 a, Vec16 b) {
  return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
}
inline Vec16 operator/(Vec16 a, Vec16 b) {
  return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)};
}
// out[0..3] = the sums of a, b, c, d (one reduction tree for four dot products)
inline void sum4(Vec16 a, Vec16 b, Vec16 c, Vec16 d, float* out) {
  const __m256 A = _mm256_add_ps(a.lo, a.hi), B = _mm256_add_ps(b.lo, b.hi);
  const __m256 C = _mm256_add_ps(c.lo, c.hi), D = _mm256_add_ps(d.lo, d.hi);
  const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(A, B), _mm256_unpackhi_ps(A, B));
  const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(C, D), _mm256_unpackhi_ps(C, D));
  const __m256 abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
inline Vec16 clamp(Vec16 x, float lo, float hi) {
  const __m256 l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
  return {_mm256_min_ps(_mm256_max_ps(x.lo, l), h), _mm256_min_ps(_mm256_max_ps(x.hi, l), h)};
}
inline Vec16 round_nearest(Vec16 x) {
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(x.lo, mode), _mm256_round_ps(x.hi, mode)};
}
inline Vec16 exp2_int(Vec16 n) {
  auto pow2 = [](__m256 m) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  };
  return {pow2(n.lo), pow2(n.hi)};
}

#else

struct Vec16 {
  float v[16];
  static Vec16 zero() { return broadcast(0.f); }
  static Vec16 broadcast(float x) {
    Vec16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = x;
    return r;
  }
  static Vec16 load(const float* p) {
    Vec16 r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static Vec16 load(const c10::BFloat16* p) {
    Vec16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = static_cast<float>(p[i]);
    return r;
  }
  void store(float* p) const { std::memcpy(p, v, sizeof(v)); }
  float sum() const {
    float s = 0.f;
    for (float x : v) s += x;
    return s;
  }
  float max() const {
    float m = v[0];
    for (float x : v) m = x > m ? x : m;
    return m;
  }
};
inline Vec16 fma(Vec16 a, Vec16 b, Vec16 c) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
inline Vec16 operator*(Vec16 a, Vec16 b) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] * b.v[i];
  return r;
}
inline Vec16 operator+(Vec16 a, Vec16 b) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] + b.v[i];
  return r;
}
inline Vec16 operator-(Vec16 a, Vec16 b) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] - b.v[i];
  return r;
}
inline Vec16 operator/(Vec16 a, Vec16 b) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] / b.v[i];
  return r;
}
inline void sum4(Vec16 a, Vec16 b, Vec16 c, Vec16 d, float* out) {
  out[0] = a.sum();
  out[1] = b.sum();
  out[2] = c.sum();
  out[3] = d.sum();
}
inline Vec16 clamp(Vec16 x, float lo, float hi) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = x.v[i] < lo ? lo : (x.v[i] > hi ? hi : x.v[i]);
  return r;
}
inline Vec16 round_nearest(Vec16 x) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::nearbyint(x.v[i]);
  return r;
}
inline Vec16 exp2_int(Vec16 n) {
  Vec16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::ldexp(1.f, static_cast<int>(n.v[i]));
  return r;
}

#endif

// e^x to ~2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r);
// inputs are clamped to [-87.3, 88.3], so it never overflows and underflows to ~1e-38.
inline Vec16 exp(Vec16 x) {
  x = clamp(x, -87.3f, 88.3f);
  const Vec16 n = round_nearest(x * Vec16::broadcast(1.44269504088896341f));
  Vec16 r = fma(n, Vec16::broadcast(-0.693359375f), x);
  r = fma(n, Vec16::broadcast(2.12194440e-4f), r);
  Vec16 p = Vec16::broadcast(1.9875691500e-4f);
  p = fma(p, r, Vec16::broadcast(1.3981999507e-3f));
  p = fma(p, r, Vec16::broadcast(8.3334519073e-3f));
  p = fma(p, r, Vec16::broadcast(4.1665795894e-2f));
  p = fma(p, r, Vec16::broadcast(1.6666665459e-1f));
  p = fma(p, r, Vec16::broadcast(5.0000001201e-1f));
  p = fma(p, r * r, r + Vec16::broadcast(1.f));
  return p * exp2_int(n);
}

// Round an fp32 value to the storage type T and back, as torch does after each op in T.
template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}
template <>
inline float round_to<float>(float x) {
  return x;
}

}  // namespace servelab
