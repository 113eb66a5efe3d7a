// Portable SIMD for kernel sources: GCC/Clang vector extensions, 32 bytes wide (64 in the AVX-512
// build). Compiled with -mavx2 -mfma they become ymm registers and FMAs, with -mavx512f zmm
// registers; without, the compiler lowers them to SSE2 pairs. Kernels are written for any width
// W = Simd<T>::W (8 or 16 floats, 4 or 8 doubles).
// Everything here lives in the per-ISA namespace so the two compilations never share a symbol.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#define PYCONV_SIMD_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define PYCONV_SIMD_AVX2 1
#include <immintrin.h>
#endif

#ifndef PYCONV_ISA
#error "csrc/cpu kernel sources are compiled with -DPYCONV_ISA=<namespace> (see CMakeLists.txt)"
#endif

#define PYCONV_INLINE inline __attribute__((always_inline))

namespace pyconv {
namespace PYCONV_ISA {

#if defined(PYCONV_SIMD_AVX512)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  static constexpr int W = kVectorBytes / 4;
  typedef float V __attribute__((vector_size(kVectorBytes)));
};
template <>
struct Simd<double> {
  static constexpr int W = kVectorBytes / 8;
  typedef double V __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using vec_t = typename Simd<T>::V;

template <typename T>
PYCONV_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
PYCONV_INLINE void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// The first N lanes of v to p (a fixed-size copy: narrower stores, none past the N elements). A
// copy that is not one plain store (6 floats: a GEMM A panel row) is one masked store with AVX-512:
// the copy went through the stack and two general registers, a store-forwarding round trip that
// was a third of a 6-row panel pack (a masked store of 4 floats measured slower than the plain one).
template <int N, typename T>
PYCONV_INLINE void vstore_first(T* p, vec_t<T> v) {
  static_assert(N <= Simd<T>::W, "at most one vector");
#if defined(PYCONV_SIMD_AVX512)
  constexpr int bytes = N * int(sizeof(T));
  if constexpr (N < Simd<T>::W && (bytes & (bytes - 1)) != 0) {
    if constexpr (sizeof(T) == 4)
      _mm512_mask_storeu_ps(p, __mmask16((1u << N) - 1), __m512(v));
    else
      _mm512_mask_storeu_pd(p, __mmask8((1u << N) - 1), __m512d(v));
    return;
  }
#endif
  std::memcpy(p, &v, N * sizeof(T));
}
// An initializer list compiles to one vbroadcastss/sd (not `V{} + x`: adding +0.0 turns -0.0 into
// +0.0, so the compiler must keep the add).
template <typename T>
PYCONV_INLINE vec_t<T> vbroadcast(T x);
#if defined(PYCONV_SIMD_AVX512)
template <>
PYCONV_INLINE vec_t<float> vbroadcast<float>(float x) { return vec_t<float>(_mm512_set1_ps(x)); }
template <>
PYCONV_INLINE vec_t<double> vbroadcast<double>(double x) { return vec_t<double>(_mm512_set1_pd(x)); }
#else
template <>
PYCONV_INLINE vec_t<float> vbroadcast<float>(float x) { return vec_t<float>{x, x, x, x, x, x, x, x}; }
template <>
PYCONV_INLINE vec_t<double> vbroadcast<double>(double x) { return vec_t<double>{x, x, x, x}; }
#endif
template <typename T>
PYCONV_INLINE T vsum(vec_t<T> v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::W; ++i) s += v[i];
  return s;
}

// The lanes [lo, hi) of a vector (clamped to [0, W)), for loads that must not touch the others: a
// masked load reads p[t] for those lanes only (p itself may point outside the array) and gives 0
// elsewhere; vor merges loads of disjoint lane sets.
template <typename T>
struct LaneMask;
#if defined(PYCONV_SIMD_AVX512)
template <>
struct LaneMask<float> {
  __mmask16 m;
  LaneMask() = default;
  LaneMask(int64_t lo, int64_t hi) {
    const int l = int(lo < 0 ? 0 : lo > 16 ? 16 : lo), h = int(hi < 0 ? 0 : hi > 16 ? 16 : hi);
    m = __mmask16(((1u << h) - 1) & ~((1u << l) - 1));
  }
};
template <>
struct LaneMask<double> {
  __mmask8 m;
  LaneMask() = default;
  LaneMask(int64_t lo, int64_t hi) {
    const int l = int(lo < 0 ? 0 : lo > 8 ? 8 : lo), h = int(hi < 0 ? 0 : hi > 8 ? 8 : hi);
    m = __mmask8(((1u << h) - 1) & ~((1u << l) - 1));
  }
};
// (masked-off lanes never fault and are never written: p may point outside the array there)
PYCONV_INLINE vec_t<float> vload_masked(const float* p, const LaneMask<float>& k) {
  return vec_t<float>(_mm512_maskz_loadu_ps(k.m, p));
}
PYCONV_INLINE vec_t<double> vload_masked(const double* p, const LaneMask<double>& k) {
  return vec_t<double>(_mm512_maskz_loadu_pd(k.m, p));
}
PYCONV_INLINE void vstore_masked(float* p, vec_t<float> v, const LaneMask<float>& k) {
  _mm512_mask_storeu_ps(p, k.m, __m512(v));
}
PYCONV_INLINE void vstore_masked(double* p, vec_t<double> v, const LaneMask<double>& k) {
  _mm512_mask_storeu_pd(p, k.m, __m512d(v));
}
// src with the mask's lanes loaded from p (as vload_masked, the others never touched)
PYCONV_INLINE vec_t<float> vload_merge(vec_t<float> src, const float* p, const LaneMask<float>& k) {
  return vec_t<float>(_mm512_mask_loadu_ps(__m512(src), k.m, p));
}
PYCONV_INLINE vec_t<double> vload_merge(vec_t<double> src, const double* p, const LaneMask<double>& k) {
  return vec_t<double>(_mm512_mask_loadu_pd(__m512d(src), k.m, p));
}
#elif defined(PYCONV_SIMD_AVX2)
template <>
struct LaneMask<float> {
  __m256i m;
  LaneMask() = default;
  LaneMask(int64_t lo, int64_t hi) {
    const int l = int(lo < 0 ? 0 : lo > 8 ? 8 : lo), h = int(hi < 0 ? 0 : hi > 8 ? 8 : hi);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    m = _mm256_and_si256(_mm256_cmpgt_epi32(iota, _mm256_set1_epi32(l - 1)),
                         _mm256_cmpgt_epi32(_mm256_set1_epi32(h), iota));
  }
};
template <>
struct LaneMask<double> {
  __m256i m;
  LaneMask() = default;
  LaneMask(int64_t lo, int64_t hi) {
    const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
    m = _mm256_and_si256(_mm256_cmpgt_epi64(iota, _mm256_set1_epi64x(lo - 1)),
                         _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), iota));
  }
};
PYCONV_INLINE vec_t<float> vload_masked(const float* p, const LaneMask<float>& k) {
  return vec_t<float>(_mm256_maskload_ps(p, k.m));
}
PYCONV_INLINE vec_t<double> vload_masked(const double* p, const LaneMask<double>& k) {
  return vec_t<double>(_mm256_maskload_pd(p, k.m));
}
PYCONV_INLINE void vstore_masked(float* p, vec_t<float> v, const LaneMask<float>& k) {
  _mm256_maskstore_ps(p, k.m, __m256(v));
}
PYCONV_INLINE void vstore_masked(double* p, vec_t<double> v, const LaneMask<double>& k) {
  _mm256_maskstore_pd(p, k.m, __m256d(v));
}
PYCONV_INLINE vec_t<float> vload_merge(vec_t<float> src, const float* p, const LaneMask<float>& k) {
  return vec_t<float>(_mm256_blendv_ps(__m256(src), _mm256_maskload_ps(p, k.m), _mm256_castsi256_ps(k.m)));
}
PYCONV_INLINE vec_t<double> vload_merge(vec_t<double> src, const double* p, const LaneMask<double>& k) {
  return vec_t<double>(_mm256_blendv_pd(__m256d(src), _mm256_maskload_pd(p, k.m), _mm256_castsi256_pd(k.m)));
}
#else
template <typename T>
struct LaneMask {
  int64_t lo, hi;
  LaneMask() = default;
  LaneMask(int64_t l, int64_t h) : lo(l < 0 ? 0 : l), hi(h > Simd<T>::W ? Simd<T>::W : h) {}
};
template <typename T>
PYCONV_INLINE vec_t<T> vload_masked(const T* p, const LaneMask<T>& k) {
  vec_t<T> v{};
  for (int64_t t = k.lo; t < k.hi; ++t) v[t] = p[t];
  return v;
}
template <typename T>
PYCONV_INLINE void vstore_masked(T* p, vec_t<T> v, const LaneMask<T>& k) {
  for (int64_t t = k.lo; t < k.hi; ++t) p[t] = v[t];
}
template <typename T>
PYCONV_INLINE vec_t<T> vload_merge(vec_t<T> v, const T* p, const LaneMask<T>& k) {
  for (int64_t t = k.lo; t < k.hi; ++t) v[t] = p[t];
  return v;
}
#endif
// Loads through a lane mask from a table (any lanes, not only a range): m[l] all ones loads lane l,
// 0 gives 0 there; as vload_masked, p may point outside the array for the masked lanes.
template <typename T>
struct MaskWord;
template <>
struct MaskWord<float> {
  typedef int32_t type;
};
template <>
struct MaskWord<double> {
  typedef int64_t type;
};
template <typename T>
using mask_word_t = typename MaskWord<T>::type;
#if defined(PYCONV_SIMD_AVX512)
PYCONV_INLINE vec_t<float> vload_where(const float* p, const int32_t* m) {
  const __m512i w = _mm512_loadu_si512(m);
  return vec_t<float>(_mm512_maskz_loadu_ps(_mm512_test_epi32_mask(w, w), p));
}
PYCONV_INLINE vec_t<double> vload_where(const double* p, const int64_t* m) {
  const __m512i w = _mm512_loadu_si512(m);
  return vec_t<double>(_mm512_maskz_loadu_pd(_mm512_test_epi64_mask(w, w), p));
}
#elif defined(PYCONV_SIMD_AVX2)
PYCONV_INLINE vec_t<float> vload_where(const float* p, const int32_t* m) {
  return vec_t<float>(_mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m))));
}
PYCONV_INLINE vec_t<double> vload_where(const double* p, const int64_t* m) {
  return vec_t<double>(_mm256_maskload_pd(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m))));
}
#else
template <typename T>
PYCONV_INLINE vec_t<T> vload_where(const T* p, const mask_word_t<T>* m) {
  vec_t<T> v{};
  for (int l = 0; l < Simd<T>::W; ++l)
    if (m[l]) v[l] = p[l];
  return v;
}
#endif
// The even lanes of a, then those of b (a stride-2 gather from two contiguous vectors).
#if defined(PYCONV_SIMD_AVX512)
PYCONV_INLINE vec_t<float> vevens(vec_t<float> a, vec_t<float> b) {
  const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return vec_t<float>(_mm512_permutex2var_ps(__m512(a), idx, __m512(b)));
}
PYCONV_INLINE vec_t<double> vevens(vec_t<double> a, vec_t<double> b) {
  const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  return vec_t<double>(_mm512_permutex2var_pd(__m512d(a), idx, __m512d(b)));
}
#elif defined(PYCONV_SIMD_AVX2)
PYCONV_INLINE vec_t<float> vevens(vec_t<float> a, vec_t<float> b) {
  const __m256 e = _mm256_shuffle_ps(__m256(a), __m256(b), _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 a4 a6 b4 b6
  return vec_t<float>(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
}
PYCONV_INLINE vec_t<double> vevens(vec_t<double> a, vec_t<double> b) {
  const __m256d e = _mm256_unpacklo_pd(__m256d(a), __m256d(b));  // a0 b0 a2 b2
  return vec_t<double>(_mm256_permute4x64_pd(e, _MM_SHUFFLE(3, 1, 2, 0)));
}
#else
template <typename V>
PYCONV_INLINE V vevens(V a, V b) {
  constexpr int W = sizeof(V) / sizeof(a[0]);
  V r;
  for (int t = 0; t < W / 2; ++t) r[t] = a[2 * t], r[W / 2 + t] = b[2 * t];
  return r;
}
#endif
// Transposes a W x W block held in W vectors: r[i][j] <-> r[j][i] (channels <-> pixels).
#if defined(PYCONV_SIMD_AVX512)
// Within each 128-bit lane the first two steps transpose 4x4 blocks (as the AVX2 version); the
// last two gather lane L of four registers into one row.
PYCONV_INLINE void vtranspose(vec_t<float> (&r)[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(__m512(r[i]), __m512(r[i + 1]));
    t[i + 1] = _mm512_unpackhi_ps(__m512(r[i]), __m512(r[i + 1]));
  }
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // u[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c
  for (int c = 0; c < 4; ++c) {
    const __m512 w0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), w1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 x0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 x1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = vec_t<float>(_mm512_shuffle_f32x4(w0, x0, 0x88));
    r[8 + c] = vec_t<float>(_mm512_shuffle_f32x4(w0, x0, 0xDD));
    r[4 + c] = vec_t<float>(_mm512_shuffle_f32x4(w1, x1, 0x88));
    r[12 + c] = vec_t<float>(_mm512_shuffle_f32x4(w1, x1, 0xDD));
  }
}
PYCONV_INLINE void vtranspose(vec_t<double> (&r)[8]) {
  __m512d t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm512_unpacklo_pd(__m512d(r[i]), __m512d(r[i + 1]));
    t[i + 1] = _mm512_unpackhi_pd(__m512d(r[i]), __m512d(r[i + 1]));
  }
  // t[2g + c], 128-bit lane L: rows 2g, 2g+1 of column 2L + c
  for (int c = 0; c < 2; ++c) {
    const __m512d w0 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0x88), w1 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0xDD);
    const __m512d x0 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0x88);
    const __m512d x1 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0xDD);
    r[c] = vec_t<double>(_mm512_shuffle_f64x2(w0, x0, 0x88));
    r[4 + c] = vec_t<double>(_mm512_shuffle_f64x2(w0, x0, 0xDD));
    r[2 + c] = vec_t<double>(_mm512_shuffle_f64x2(w1, x1, 0x88));
    r[6 + c] = vec_t<double>(_mm512_shuffle_f64x2(w1, x1, 0xDD));
  }
}
#elif defined(PYCONV_SIMD_AVX2)
PYCONV_INLINE void vtranspose(vec_t<float> (&r)[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(__m256(r[i]), __m256(r[i + 1]));
    t[i + 1] = _mm256_unpackhi_ps(__m256(r[i]), __m256(r[i + 1]));
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = vec_t<float>(_mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    r[i + 4] = vec_t<float>(_mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}
PYCONV_INLINE void vtranspose(vec_t<double> (&r)[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(__m256d(r[0]), __m256d(r[1]));
  const __m256d t1 = _mm256_unpackhi_pd(__m256d(r[0]), __m256d(r[1]));
  const __m256d t2 = _mm256_unpacklo_pd(__m256d(r[2]), __m256d(r[3]));
  const __m256d t3 = _mm256_unpackhi_pd(__m256d(r[2]), __m256d(r[3]));
  r[0] = vec_t<double>(_mm256_permute2f128_pd(t0, t2, 0x20));
  r[1] = vec_t<double>(_mm256_permute2f128_pd(t1, t3, 0x20));
  r[2] = vec_t<double>(_mm256_permute2f128_pd(t0, t2, 0x31));
  r[3] = vec_t<double>(_mm256_permute2f128_pd(t1, t3, 0x31));
}
#else
template <typename V, int N>
PYCONV_INLINE void vtranspose(V (&r)[N]) {
  for (int i = 0; i < N; ++i)
    for (int j = i + 1; j < N; ++j) {
      const auto a = r[i][j];
      r[i][j] = r[j][i];
      r[j][i] = a;
    }
}
#endif
// Output tiles' rows side by side. o[0..M-1]: lane l of o[j] is column j of tile l's row (a
// Winograd output transform's M row vectors, tiles in the lanes); R[q] gets the rows of tiles
// q*G .. q*G + G - 1, G = W/M, one after another (lane e: column e % M of tile q*G + e / M), so
// where those tiles sit side by side in one output row, R[q] is W consecutive outputs. Two
// levels of two-source permutes; the transpose it replaces (then a store per tile) took 4x the
// shuffles. kInterleaveRows<T, M>: implemented for this ISA.
#if defined(PYCONV_SIMD_AVX512)
template <typename T, int M>
constexpr bool kInterleaveRows = M == 2 || M == 4;
template <int M>
PYCONV_INLINE void vinterleave_rows(const vec_t<float>* o, vec_t<float>* R) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  if constexpr (M == 2) {
    R[0] = vec_t<float>(_mm512_permutex2var_ps(__m512(o[0]), lo, __m512(o[1])));
    R[1] = vec_t<float>(_mm512_permutex2var_ps(__m512(o[0]), hi, __m512(o[1])));
  } else {
    static_assert(M == 4, "vinterleave_rows: M is 2 or 4");
    // column pairs (0, 1) and (2, 3) of tiles 0-7 and 8-15, then the pairs of each tile together
    const __m512d x0 = _mm512_castps_pd(_mm512_permutex2var_ps(__m512(o[0]), lo, __m512(o[1])));
    const __m512d x1 = _mm512_castps_pd(_mm512_permutex2var_ps(__m512(o[0]), hi, __m512(o[1])));
    const __m512d y0 = _mm512_castps_pd(_mm512_permutex2var_ps(__m512(o[2]), lo, __m512(o[3])));
    const __m512d y1 = _mm512_castps_pd(_mm512_permutex2var_ps(__m512(o[2]), hi, __m512(o[3])));
    const __m512i plo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), phi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    R[0] = vec_t<float>(_mm512_castpd_ps(_mm512_permutex2var_pd(x0, plo, y0)));
    R[1] = vec_t<float>(_mm512_castpd_ps(_mm512_permutex2var_pd(x0, phi, y0)));
    R[2] = vec_t<float>(_mm512_castpd_ps(_mm512_permutex2var_pd(x1, plo, y1)));
    R[3] = vec_t<float>(_mm512_castpd_ps(_mm512_permutex2var_pd(x1, phi, y1)));
  }
}
// The inverse: o[j] lane q*G + u <- R[q] lane u*M + j (W/M tiles' rows side by side back to one
// vector per column, tiles in the lanes).
template <int M>
PYCONV_INLINE void vdeinterleave_rows(const vec_t<float>* R, vec_t<float>* o) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  if constexpr (M == 2) {
    o[0] = vec_t<float>(_mm512_permutex2var_ps(__m512(R[0]), ev, __m512(R[1])));
    o[1] = vec_t<float>(_mm512_permutex2var_ps(__m512(R[0]), od, __m512(R[1])));
  } else {
    static_assert(M == 4, "vdeinterleave_rows: M is 2 or 4");
    const __m512i pev = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), pod = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    // each tile's column pairs (0, 1) and (2, 3), tiles 0-7 then 8-15; then the columns apart
    const __m512 x0 = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(__m512(R[0])), pev, _mm512_castps_pd(__m512(R[1]))));
    const __m512 y0 = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(__m512(R[0])), pod, _mm512_castps_pd(__m512(R[1]))));
    const __m512 x1 = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(__m512(R[2])), pev, _mm512_castps_pd(__m512(R[3]))));
    const __m512 y1 = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(__m512(R[2])), pod, _mm512_castps_pd(__m512(R[3]))));
    o[0] = vec_t<float>(_mm512_permutex2var_ps(x0, ev, x1));
    o[1] = vec_t<float>(_mm512_permutex2var_ps(x0, od, x1));
    o[2] = vec_t<float>(_mm512_permutex2var_ps(y0, ev, y1));
    o[3] = vec_t<float>(_mm512_permutex2var_ps(y0, od, y1));
  }
}
template <int M>
PYCONV_INLINE void vinterleave_rows(const vec_t<double>* o, vec_t<double>* R) {
  const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  if constexpr (M == 2) {
    R[0] = vec_t<double>(_mm512_permutex2var_pd(__m512d(o[0]), lo, __m512d(o[1])));
    R[1] = vec_t<double>(_mm512_permutex2var_pd(__m512d(o[0]), hi, __m512d(o[1])));
  } else {
    static_assert(M == 4, "vinterleave_rows: M is 2 or 4");
    const __m512d x0 = _mm512_permutex2var_pd(__m512d(o[0]), lo, __m512d(o[1]));
    const __m512d x1 = _mm512_permutex2var_pd(__m512d(o[0]), hi, __m512d(o[1]));
    const __m512d y0 = _mm512_permutex2var_pd(__m512d(o[2]), lo, __m512d(o[3]));
    const __m512d y1 = _mm512_permutex2var_pd(__m512d(o[2]), hi, __m512d(o[3]));
    const __m512i plo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), phi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    R[0] = vec_t<double>(_mm512_permutex2var_pd(x0, plo, y0));
    R[1] = vec_t<double>(_mm512_permutex2var_pd(x0, phi, y0));
    R[2] = vec_t<double>(_mm512_permutex2var_pd(x1, plo, y1));
    R[3] = vec_t<double>(_mm512_permutex2var_pd(x1, phi, y1));
  }
}
template <int M>
PYCONV_INLINE void vdeinterleave_rows(const vec_t<double>* R, vec_t<double>* o) {
  const __m512i ev = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), od = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  if constexpr (M == 2) {
    o[0] = vec_t<double>(_mm512_permutex2var_pd(__m512d(R[0]), ev, __m512d(R[1])));
    o[1] = vec_t<double>(_mm512_permutex2var_pd(__m512d(R[0]), od, __m512d(R[1])));
  } else {
    static_assert(M == 4, "vdeinterleave_rows: M is 2 or 4");
    const __m512i plo = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13), phi = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
    const __m512d x0 = _mm512_permutex2var_pd(__m512d(R[0]), plo, __m512d(R[1]));
    const __m512d y0 = _mm512_permutex2var_pd(__m512d(R[0]), phi, __m512d(R[1]));
    const __m512d x1 = _mm512_permutex2var_pd(__m512d(R[2]), plo, __m512d(R[3]));
    const __m512d y1 = _mm512_permutex2var_pd(__m512d(R[2]), phi, __m512d(R[3]));
    o[0] = vec_t<double>(_mm512_permutex2var_pd(x0, ev, x1));
    o[1] = vec_t<double>(_mm512_permutex2var_pd(x0, od, x1));
    o[2] = vec_t<double>(_mm512_permutex2var_pd(y0, ev, y1));
    o[3] = vec_t<double>(_mm512_permutex2var_pd(y0, od, y1));
  }
}
#else
template <typename T, int M>
constexpr bool kInterleaveRows = false;
template <int M, typename V>
PYCONV_INLINE void vinterleave_rows(const V* o, V* R) {
  constexpr int W = sizeof(V) / sizeof(o[0][0]), G = W / M;
  for (int q = 0; q < M; ++q)
    for (int e = 0; e < W; ++e) R[q][e] = o[e % M][q * G + e / M];
}
template <int M, typename V>
PYCONV_INLINE void vdeinterleave_rows(const V* R, V* o) {
  constexpr int W = sizeof(V) / sizeof(R[0][0]), G = W / M;
  for (int q = 0; q < M; ++q)
    for (int e = 0; e < W; ++e) o[e % M][q * G + e / M] = R[q][e];
}
#endif

template <typename T>
PYCONV_INLINE vec_t<T> vor(vec_t<T> a, vec_t<T> b) {
  typedef int64_t I __attribute__((vector_size(kVectorBytes)));
  return vec_t<T>(I(a) | I(b));
}

// A vector comparison's lanes as bits (lane l -> bit l) and back: the compact mask a ReLU keeps for
// its backward (1 bit a value instead of the output itself).
template <typename T>
struct MaskVec;
template <>
struct MaskVec<float> {
  typedef int32_t V __attribute__((vector_size(kVectorBytes)));
};
template <>
struct MaskVec<double> {
  typedef int64_t V __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using mask_vec_t = typename MaskVec<T>::V;
template <typename T>
PYCONV_INLINE uint32_t vlane_bits(mask_vec_t<T> m) {
#if defined(PYCONV_SIMD_AVX512)
  if constexpr (sizeof(T) == 4)
    return _mm512_movepi32_mask(__m512i(m));
  else
    return _mm512_movepi64_mask(__m512i(m));
#elif defined(PYCONV_SIMD_AVX2)
  if constexpr (sizeof(T) == 4)
    return uint32_t(_mm256_movemask_ps(__m256(m)));
  else
    return uint32_t(_mm256_movemask_pd(__m256d(m)));
#else
  uint32_t bits = 0;
  for (int l = 0; l < Simd<T>::W; ++l) bits |= uint32_t(m[l] != 0) << l;
  return bits;
#endif
}
// v where bit l of bits is set, 0 elsewhere.
template <typename T>
PYCONV_INLINE vec_t<T> vkeep_bits(vec_t<T> v, uint32_t bits) {
  using M = mask_vec_t<T>;
  M lane{};
  for (int l = 0; l < Simd<T>::W; ++l) lane[l] = mask_word_t<T>(1) << l;
  const M on = (lane & M(mask_word_t<T>(bits) - M{})) != M{};
  return on ? v : vec_t<T>{};
}

PYCONV_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
PYCONV_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
PYCONV_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace PYCONV_ISA
}  // namespace pyconv
