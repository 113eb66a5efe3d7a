// Float64 sums over a row of float32/float64 values, four lanes at a time: the batch-norm
// statistics, the conv epilogue's per-channel sums and every conv algorithm's grad-bias share them.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/runtime.h"
#include "cpu/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

typedef double d4 __attribute__((vector_size(32)));
typedef float f4 __attribute__((vector_size(16)));

// Four consecutive values widened to double.
PYCONV_INLINE d4 load4d(const float* p) {
  f4 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, d4);
}
PYCONV_INLINE d4 load4d(const double* p) {
  d4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// p[0:4] += v.
PYCONV_INLINE void add4d(double* p, d4 v) {
  v += load4d(p);
  std::memcpy(p, &v, sizeof v);
}
// The four lanes of p summed in a fixed order.
PYCONV_INLINE double sum4d(const double* p) {
  return (p[0] + p[1]) + (p[2] + p[3]);
}

// (sum (a - ka), sum (a - ka)(b - kb)) over n values, in double; with a mask m, a is read as
// (m <= 0 || m >= mhi ? 0 : a) (the ReLU backward on the output m; ReLU6's with mhi = 6, none above
// with mhi NaN).
// rows > 1: the same over `rows` rows of n values, row_stride apart (one channel of every image),
// accumulated together and reduced once.
template <typename T>
void sum_pair(const T* a, const T* b, const T* m, double ka, double kb, int64_t n, double* out,
              double mhi = __builtin_nan(""), int64_t rows = 1, int64_t row_stride = 0) {
  d4 s1[4] = {}, s2[4] = {};
  const d4 va = d4{} + ka, vb = d4{} + kb, vhi = d4{} + mhi;
  double r1 = 0, r2 = 0;
  for (int64_t row = 0; row < rows; ++row, a += row_stride, b += row_stride, m = m ? m + row_stride : m) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      for (int u = 0; u < 4; ++u) {
        d4 av = load4d(a + i + 4 * u);
        if (m) {
          const d4 mv = load4d(m + i + 4 * u);
          av = (mv <= d4{}) | (mv >= vhi) ? d4{} : av;
        }
        const d4 da = av - va;
        const d4 db = load4d(b + i + 4 * u) - vb;
        s1[u] += da;
        s2[u] += da * db;
      }
    }
    for (; i < n; ++i) {
      const double ai = (m && (m[i] <= T(0) || double(m[i]) >= mhi)) ? 0.0 : double(a[i]);
      const double da = ai - ka, db = double(b[i]) - kb;
      r1 += da;
      r2 += da * db;
    }
  }
  const d4 t1 = (s1[0] + s1[1]) + (s1[2] + s1[3]), t2 = (s2[0] + s2[1]) + (s2[2] + s2[3]);
  out[0] = r1 + ((t1[0] + t1[1]) + (t1[2] + t1[3]));
  out[1] = r2 + ((t2[0] + t2[1]) + (t2[2] + t2[3]));
}

// sum_pair for float32 where a float shift loses nothing (ka, kb exact in float): each lane sums
// blocks of 8 values in float, 8 lanes wide, and adds the block's sums into double; twice the width
// of the all-double loop (batch-norm backward, 8x16x32x32: its sums were the fused op's slowest
// pass). A block's float error (~4 roundings of the block's own magnitude) stays far below the
// float32 inputs' own; the batch-norm statistics, which cancel (E[y^2] - E[y]^2), keep sum_pair.
inline void sum_pair_float_blocks(const float* a, const float* b, const float* m, double ka, double kb, int64_t n,
                                  double* out, double mhi = __builtin_nan(""), int64_t rows = 1,
                                  int64_t row_stride = 0) {
  using V = vec_t<float>;
  constexpr int W = Simd<float>::W, kBlock = 8 * W;
  if (double(float(ka)) != ka || double(float(kb)) != kb)
    return sum_pair(a, b, m, ka, kb, n, out, mhi, rows, row_stride);
  const V va = vbroadcast<float>(float(ka)), vb = vbroadcast<float>(float(kb)), vhi = vbroadcast<float>(float(mhi));
  constexpr int H = W / 4;  // d4 accumulators per float vector
  d4 s1[H] = {}, s2[H] = {};
  // one block of `vecs` whole vectors (8, or the fewer left at a row's end: rows of 64 values, an
  // 8x8 plane, went all through the double loop at half the speed)
  auto block = [&](int64_t i, int vecs) __attribute__((always_inline)) {
    V f1[2] = {}, f2[2] = {};
    for (int u = 0; u < vecs; ++u) {
      V av = vload(a + i + u * W);
      if (m) {
        const V mv = vload(m + i + u * W);
        av = (mv <= V{}) | (mv >= vhi) ? V{} : av;
      }
      const V da = av - va, db = vload(b + i + u * W) - vb;
      f1[u & 1] += da;
      f2[u & 1] += da * db;
    }
    const V t1 = f1[0] + f1[1], t2 = f2[0] + f2[1];
    alignas(64) float b1[W], b2[W];
    vstore(b1, t1);
    vstore(b2, t2);
    for (int h = 0; h < H; ++h) {
      s1[h] += load4d(b1 + 4 * h);
      s2[h] += load4d(b2 + 4 * h);
    }
  };
  double rest[2] = {0, 0};
  for (int64_t row = 0; row < rows; ++row, a += row_stride, b += row_stride, m = m ? m + row_stride : m) {
    int64_t i = 0;
    for (; i + kBlock <= n; i += kBlock) block(i, 8);
    if (const int vecs = int((n - i) / W); vecs > 0) {
      block(i, vecs);
      i += int64_t(vecs) * W;
    }
    if (i < n) {
      double tail[2];
      sum_pair(a + i, b + i, m ? m + i : nullptr, ka, kb, n - i, tail, mhi);
      rest[0] += tail[0], rest[1] += tail[1];
    }
  }
  for (int h = 2; h < H; h += 2) s1[0] += s1[h] + s1[h + 1], s2[0] += s2[h] + s2[h + 1];  // (AVX-512: 4)
  const d4 t1 = s1[0] + s1[1], t2 = s2[0] + s2[1];
  out[0] = rest[0] + ((t1[0] + t1[1]) + (t1[2] + t1[3]));
  out[1] = rest[1] + ((t2[0] + t2[1]) + (t2[2] + t2[3]));
}
inline void sum_pair_float_blocks(const double* a, const double* b, const double* m, double ka, double kb, int64_t n,
                                  double* out, double mhi = __builtin_nan(""), int64_t rows = 1,
                                  int64_t row_stride = 0) {
  sum_pair(a, b, m, ka, kb, n, out, mhi, rows, row_stride);  // float64 inputs: all in double
}

// sum of n values in double, in a fixed order.
template <typename T>
double sum_row(const T* a, int64_t n) {
  d4 s[4] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int u = 0; u < 4; ++u) s[u] += load4d(a + i + 4 * u);
  double r = 0;
  for (; i < n; ++i) r += double(a[i]);
  const d4 t = (s[0] + s[1]) + (s[2] + s[3]);
  return r + ((t[0] + t[1]) + (t[2] + t[3]));
}

// out[c] = sum_{n,l} a[n][c][l], accumulated in double: the grad-bias of every conv algorithm
// (gb[k] = sum_{n,p,q} gy[n,k,p,q]), so its precision does not depend on the algorithm. Each channel
// adds its parts (n, chunk of kChunk values) in one fixed order, so the result does not depend on the
// thread count. Fewer channels than threads: the parts themselves are the parallel tasks.
template <typename T>
void channel_sums(const T* a, int64_t N, int64_t C, int64_t L, T* out) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = imax(1, ceil_div(L, kChunk)), parts = N * chunks;
  auto part = [=](int64_t c, int64_t j) {
    const int64_t n = j / chunks, l0 = j % chunks * kChunk;
    return sum_row(a + (n * C + c) * L + l0, imin(kChunk, L - l0));
  };
  const int nthr = num_threads();
  if (C >= nthr) {
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t j = 0; j < parts; ++j) s += part(c, j);
      out[c] = T(s);
    }
    return;
  }
  Workspace ws(checked_bytes(C * parts, sizeof(double)));
  double* ps = ws.as<double>();
#pragma omp parallel for num_threads(static_cast<int>(imin(nthr, imax(1, C * parts)))) schedule(static)
  for (int64_t t = 0; t < C * parts; ++t) ps[t] = part(t / parts, t % parts);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t j = 0; j < parts; ++j) s += ps[c * parts + j];
    out[c] = T(s);
  }
}

// stats[k] += sum over (g, r) of part[2*((g*K + k)*R + r)], stats[K + k] likewise from the odd
// entries: the (sum, sum of squares) partials of a conv epilogue's batch-norm statistics, one per
// (group of work g, channel k, row r), added in that fixed order so the statistics do not depend on
// which thread wrote a partial.
inline void add_channel_partials(const double* part, int64_t groups, int64_t K, int64_t R, double* stats) {
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r, part += 2) stats[k] += part[0], stats[K + k] += part[1];
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
