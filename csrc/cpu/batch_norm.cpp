// Batch normalization over x[N][C][L], per channel c, M = N*L values each; float32 / float64.
//
//   training  mean_c = (1/M) sum x,  var_c = (1/M) sum (x - mean_c)^2 (biased),  invstd_c = 1/sqrt(var_c + eps)
//             running_mean = (1-m) running_mean + m mean_c,  running_var = (1-m) running_var + m var_c M/(M-1)
//   eval      mean_c = running_mean,  invstd_c = 1/sqrt(running_var + eps)
//   output    y = (x - mean_c) invstd_c w_c + b_c = x alpha_c + beta_c,  alpha = w invstd, beta = b - mean alpha
//   backward  gb_c = sum gy,  gw_c = invstd_c sum gy (x - mean_c)
//             training: gx = (gy - gb_c/M - (x - mean_c) invstd_c^2 sum(gy (x - mean_c))/M) w_c invstd_c
//             eval:     gx = gy w_c invstd_c   (the statistics are constants)
//   fused tail (conv_bn_relu): forward z = min(max(y [+ residual], 0), relu_max) in the normalize
//             sweep (relu_max: infinity for ReLU, 6 for ReLU6); backward takes gz and z and uses
//             gy = (z <= 0 || z >= relu_max ? 0 : gz) inside the sums and the gx sweep (torch's
//             threshold / hardtanh backward), and writes it as the residual's gradient
//   ReLU mask bits (relu_mask): the forward may also keep, per value, whether the gradient passes
//             (bit l % 64 of word (n*C + c) * ceil(L/64) + l/64), and the backward read those bits
//             instead of z: 1/32 of z's bytes in each of its two sweeps
//   given statistics (sum y, sum y^2 per channel, from the conv epilogue): no statistics pass,
//             mean = s0/M, var = max(s1/M - mean^2, 0)
//
// Statistics are one pass of float64 sums shifted by the channel's first value K (sum (x-K) and
// sum (x-K)^2), which keeps the variance accurate when |mean| >> std. Each (n, c) row is cut into
// fixed-size chunks whose partial sums are reduced in a fixed order, so results do not depend on
// the thread count, and a single large image still uses every thread; planes of up to kSmallPlane
// values are summed a channel (all its rows) per task instead.
#include "cpu/batch_norm.h"

#include <cmath>
#include <cstring>

#include <omp.h>

#include "common/runtime.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

namespace pyconv {
namespace PYCONV_ISA {
namespace {

constexpr int64_t kChunk = 32768;  // elements per reduction task (fixed: results independent of threads)
// Planes up to this size are summed a whole channel per task (every image's row together, reduced
// once): a task per 8x8 row cost more in its setup and final reduction than in its 64 values (the
// batch-norm backward of 8x64x8x8 ran at half torch's speed).
constexpr int64_t kSmallPlane = 256;

// Sum tasks are (row = n*C + c, chunk) pairs, or for small planes channels (all N rows of channel
// c); the elementwise sweeps always take (row, chunk) tasks (rows in memory order: by channel, a
// 32x32 layer's normalize sweep measured slower).
struct Tasks {
  bool per_channel;
  int64_t chunks, rows, count;
  Tasks(const BatchNormShape& s)
      : per_channel(s.L <= kSmallPlane && s.N > 1), chunks(ceil_div(s.L, kChunk)), rows(s.N * s.C * chunks),
        count(per_channel ? s.C : rows) {}
};

// The mask words from element offset off of x[N][C][L] on (a row's or a chunk's start: a word's
// first bit); null without a mask.
template <typename Word>
Word* mask_words_at(Word* mask, const BatchNormShape& s, int64_t off) {
  return mask ? mask + (off / s.L) * relu_mask_words_per_row(s.L) + (off % s.L) / 64 : nullptr;
}

// src[i] (a vector from i, i a multiple of W) where bit i of the mask words at bits is set, else 0
// (bits starts at value 0's word).
template <typename T>
PYCONV_INLINE vec_t<T> vload_kept(const T* src, const uint64_t* bits, int64_t i) {
  return vkeep_bits<T>(vload(src + i), uint32_t(bits[i >> 6] >> (i & 63)));
}
template <typename T>
PYCONV_INLINE T load_kept(const T* src, const uint64_t* bits, int64_t i) {
  return (bits[i >> 6] >> (i & 63)) & 1 ? src[i] : T(0);
}

// dst[i] = src[i] through the mask bits, i in [0, n).
template <typename T>
void keep_masked(const T* src, const uint64_t* bits, int64_t n, T* dst) {
  constexpr int W = Simd<T>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(dst + i, vload_kept(src, bits, i));
  for (; i < n; ++i) dst[i] = load_kept(src, bits, i);
}

// For each task, sum_pair over its chunk of a and b (same [N][C][L] layout, mask m optional);
// shifts per channel (null = 0).
// float_blocks: sum_pair_float_blocks (the backward's sums, which do not cancel).
// mbits (instead of m): a's values through the ReLU mask bits, copied masked into the thread's
// scratch first (small planes: b's rows too, so both are contiguous rows), the same sums after.
template <typename T>
void chunk_sums(const BatchNormShape& s, const Tasks& tk, const T* a, const T* b, const T* m, const double* ka,
                const double* kb, double* partial, double mhi = __builtin_nan(""), bool float_blocks = false,
                const uint64_t* mbits = nullptr) {
  const int nthr = static_cast<int>(imin(num_threads(), imax(1, tk.count)));
  const int64_t scratch_elems = tk.per_channel ? 2 * s.N * s.L : imin(kChunk, s.L);
  Workspace scratch(mbits ? checked_bytes(int64_t(nthr) * scratch_elems, sizeof(T)) : 0);
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t t = 0; t < tk.count; ++t) {
    const int64_t row = tk.per_channel ? t : t / tk.chunks, c = row % s.C;  // (per channel: one chunk)
    const int64_t l0 = tk.per_channel ? 0 : (t % tk.chunks) * kChunk, n = imin(kChunk, s.L - l0);
    const int64_t off = row * s.L + l0;
    const int64_t rows = tk.per_channel ? s.N : 1;
    int64_t stride = s.C * s.L;
    const double kac = ka ? ka[c] : 0.0, kbc = kb ? kb[c] : 0.0;
    const T *as = a + off, *bs = b + off, *ms = m ? m + off : nullptr;
    if (mbits) {
      T* buf = scratch.as<T>() + omp_get_thread_num() * scratch_elems;
      for (int64_t r = 0; r < rows; ++r)
        keep_masked(as + r * stride, mask_words_at(mbits, s, off + r * stride), n, buf + r * n);
      if (rows > 1) {
        for (int64_t r = 0; r < rows; ++r) std::memcpy(buf + (rows + r) * n, bs + r * stride, n * sizeof(T));
        bs = buf + rows * n;
      }
      as = buf, ms = nullptr, stride = n;
    }
    if (float_blocks)
      sum_pair_float_blocks(as, bs, ms, kac, kbc, n, partial + 2 * t, mhi, rows, stride);
    else
      sum_pair(as, bs, ms, kac, kbc, n, partial + 2 * t, mhi, rows, stride);
  }
}

// Per-channel totals of the partial sums, in a fixed order.
void reduce_channels(const BatchNormShape& s, const Tasks& tk, const double* partial, double* total) {
  if (tk.per_channel) {  // a task per channel: its sums are the totals
    for (int64_t e = 0; e < 2 * s.C; ++e) total[e] = partial[e];
    return;
  }
  for (int64_t c = 0; c < s.C; ++c) total[2 * c] = total[2 * c + 1] = 0;
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t k = 0; k < tk.chunks; ++k) {
        const double* p = partial + 2 * ((n * s.C + c) * tk.chunks + k);
        total[2 * c] += p[0];
        total[2 * c + 1] += p[1];
      }
}

// out = f(in...) elementwise per channel: body(c, offset, count) over every (row, chunk) task.
template <typename Body>
void for_each_chunk(const BatchNormShape& s, const Tasks& tk, Body body) {
#pragma omp parallel for num_threads(static_cast<int>(imin(num_threads(), imax(1, tk.rows)))) schedule(static)
  for (int64_t t = 0; t < tk.rows; ++t) {
    const int64_t row = t / tk.chunks;
    const int64_t l0 = (t % tk.chunks) * kChunk;
    body(row % s.C, row * s.L + l0, imin(kChunk, s.L - l0));
  }
}

}  // namespace

template <typename T>
void batch_norm_forward(const BatchNormShape& s, const T* x, const T* weight, const T* bias, T* running_mean,
                        T* running_var, T* y, T* save_mean, T* save_invstd, bool training, double momentum,
                        double eps, const double* stats, bool relu, double relu_max, const T* residual,
                        uint64_t* relu_mask) {
  using V = vec_t<T>;
  const int64_t M = s.N * s.L;
  const Tasks tk(s);
  // Per channel: the shift K and the shifted (sum, sum of squares); then alpha and beta in T.
  Workspace ch_ws(checked_bytes(3 * s.C, sizeof(double)));
  double* shift = ch_ws.as<double>();
  double* total = shift + s.C;
  Workspace ab_ws(checked_bytes(2 * s.C, sizeof(T)));
  T* alpha = ab_ws.as<T>();
  T* beta = alpha + s.C;

  if (training) {
    if (M == 0) {  // empty batch: nothing to normalize, running statistics unchanged
      for (int64_t c = 0; c < s.C; ++c) save_mean[c] = T(0), save_invstd[c] = T(0);
      return;
    }
    if (stats) {  // sums taken by the producer of x (unshifted)
      for (int64_t c = 0; c < s.C; ++c) shift[c] = 0, total[2 * c] = stats[c], total[2 * c + 1] = stats[s.C + c];
    } else {
      for (int64_t c = 0; c < s.C; ++c) {
        const double k = double(x[c * s.L]);  // the channel's first value (n = 0, l = 0)
        shift[c] = std::isfinite(k) ? k : 0.0;
      }
      Workspace part_ws(checked_bytes(2 * tk.count, sizeof(double)));
      chunk_sums(s, tk, x, x, static_cast<const T*>(nullptr), shift, shift, part_ws.as<double>());
      reduce_channels(s, tk, part_ws.as<double>(), total);
    }
    for (int64_t c = 0; c < s.C; ++c) {
      const double d = total[2 * c] / double(M);
      const double var_raw = total[2 * c + 1] / double(M) - d * d;
      const double var = var_raw < 0 ? 0.0 : var_raw;  // rounding; keeps NaN
      const double mean = shift[c] + d;
      const double invstd = 1.0 / std::sqrt(var + eps);
      save_mean[c] = T(mean);
      save_invstd[c] = T(invstd);
      if (running_mean) running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * mean);
      if (running_var) {
        const double unbiased = M > 1 ? var * double(M) / double(M - 1) : var;
        running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * unbiased);
      }
    }
  } else {
    for (int64_t c = 0; c < s.C; ++c) {
      save_mean[c] = running_mean[c];
      save_invstd[c] = T(1.0 / std::sqrt(double(running_var[c]) + eps));
    }
  }
  for (int64_t c = 0; c < s.C; ++c) {
    const double a = (weight ? double(weight[c]) : 1.0) * double(save_invstd[c]);
    alpha[c] = T(a);
    beta[c] = T((bias ? double(bias[c]) : 0.0) - double(save_mean[c]) * a);
  }
  for_each_chunk(s, tk, [&](int64_t c, int64_t off, int64_t n) {
    const T* xs = x + off;
    const T* rs = residual ? residual + off : nullptr;
    T* ys = y + off;
    const V va = vbroadcast<T>(alpha[c]), vb = vbroadcast<T>(beta[c]), zero = V{};
    // the normalized value, plus the residual when there is one (the add before the activation)
    auto nv = [&](int64_t i) { return rs ? vload(xs + i) * va + vb + vload(rs + i) : vload(xs + i) * va + vb; };
    auto n1 = [&](int64_t i) { return rs ? xs[i] * alpha[c] + beta[c] + rs[i] : xs[i] * alpha[c] + beta[c]; };
    int64_t i = 0;
    if (relu) {  // clipped at relu_max too (infinity for ReLU); NaN stays NaN as in torch.relu / hardtanh
      const T hi = T(relu_max);
      const V vhi = vbroadcast<T>(hi);
      // The mask bits: the gradient passes unless z <= 0 or z >= mhi, as the backward tests z (mhi:
      // NaN for ReLU, so an infinite z passes). A chunk starts a word (kChunk is a multiple of 64)
      // and a vector never straddles two; each word is gathered in a register and stored once, when
      // its 64 values are done (the last, partial one after the loops).
      uint64_t* mw = mask_words_at(relu_mask, s, off);
      const T mhi = std::isfinite(relu_max) ? hi : T(__builtin_nan(""));
      const V vmhi = vbroadcast<T>(mhi);
      uint64_t word = 0;
      for (; i + Simd<T>::W <= n; i += Simd<T>::W) {
        V v = nv(i);
        v = v < zero ? zero : v;
        v = v > vhi ? vhi : v;
        vstore(ys + i, v);
        if (mw) {
          word |= uint64_t(vlane_bits<T>(~((v <= zero) | (v >= vmhi)))) << (i & 63);
          if (((i + Simd<T>::W) & 63) == 0) mw[i >> 6] = word, word = 0;
        }
      }
      for (; i < n; ++i) {
        const T v = n1(i);
        const T z = v < T(0) ? T(0) : v > hi ? hi : v;
        ys[i] = z;
        if (mw) {
          word |= uint64_t(!(z <= T(0) || z >= mhi)) << (i & 63);
          if (((i + 1) & 63) == 0) mw[i >> 6] = word, word = 0;
        }
      }
      if (mw && (n & 63)) mw[(n - 1) >> 6] = word;
    } else {
      for (; i + Simd<T>::W <= n; i += Simd<T>::W) vstore(ys + i, nv(i));
      for (; i < n; ++i) ys[i] = n1(i);
    }
  });
}

template <typename T>
void batch_norm_backward(const BatchNormShape& s, const T* gy, const T* x, const T* weight, const T* save_mean,
                         const T* save_invstd, T* gx, T* gw, T* gb, bool training, const T* relu_out,
                         double relu_max, T* g_residual, const uint64_t* relu_mask) {
  using V = vec_t<T>;
  // the mask's upper bound: none for ReLU (NaN compares false), relu_max for a clipped ReLU
  const double mhi = std::isfinite(relu_max) ? relu_max : __builtin_nan("");
  const int64_t M = s.N * s.L;
  const Tasks tk(s);
  Workspace ch_ws(checked_bytes(3 * s.C, sizeof(double)));
  double* mean = ch_ws.as<double>();
  double* total = mean + s.C;  // (sum gy, sum gy (x - mean)) per channel
  for (int64_t c = 0; c < s.C; ++c) mean[c] = double(save_mean[c]);
  const bool need_sums = gw || gb || (gx && training);
  if (need_sums) {
    Workspace part_ws(checked_bytes(2 * tk.count, sizeof(double)));
    chunk_sums(s, tk, gy, x, relu_mask ? nullptr : relu_out, nullptr, mean, part_ws.as<double>(), mhi, true,
               relu_mask);
    reduce_channels(s, tk, part_ws.as<double>(), total);
    for (int64_t c = 0; c < s.C; ++c) {
      if (gb) gb[c] = T(total[2 * c]);
      if (gw) gw[c] = T(total[2 * c + 1] * double(save_invstd[c]));
    }
  }
  if ((!gx && !g_residual) || M == 0) return;
  Workspace coef_ws(checked_bytes(3 * s.C, sizeof(T)));
  T* a = coef_ws.as<T>();  // w invstd
  T* mg = a + s.C;         // mean of gy (training)
  T* k = mg + s.C;         // invstd^2 sum(gy (x - mean)) / M (training)
  for (int64_t c = 0; c < s.C; ++c) {
    const double invstd = double(save_invstd[c]);
    a[c] = T((weight ? double(weight[c]) : 1.0) * invstd);
    mg[c] = training ? T(total[2 * c] / double(M)) : T(0);
    k[c] = training ? T(invstd * invstd * total[2 * c + 1] / double(M)) : T(0);
  }
  for_each_chunk(s, tk, [&](int64_t c, int64_t off, int64_t n) {
    const T* gys = gy + off;
    const T* xs = x + off;
    const uint64_t* mw = mask_words_at(relu_mask, s, off);
    const T* zs = relu_out && !mw ? relu_out + off : nullptr;
    T* gxs = gx ? gx + off : nullptr;
    T* grs = g_residual ? g_residual + off : nullptr;
    const V va = vbroadcast<T>(a[c]), zero = V{}, vhi = vbroadcast<T>(T(mhi));
    // the incoming gradient, through the ReLU when its output (or its mask bits) is given
    auto gv = [&](int64_t i) {
      if (mw) return vload_kept(gys, mw, i);
      if (!zs) return vload(gys + i);
      const V z = vload(zs + i);
      return (z <= zero) | (z >= vhi) ? zero : vload(gys + i);
    };
    auto g1 = [&](int64_t i) {
      if (mw) return load_kept(gys, mw, i);
      return (zs && (zs[i] <= T(0) || double(zs[i]) >= mhi)) ? T(0) : gys[i];
    };
    int64_t i = 0;
    if (!gxs) {  // the residual's gradient alone: gy through the activation's mask
      for (; i + Simd<T>::W <= n; i += Simd<T>::W) vstore(grs + i, gv(i));
      for (; i < n; ++i) grs[i] = g1(i);
      return;
    }
    // each masked gradient computed once: the residual's gradient (when wanted) and gx's input
    if (training) {
      const V vmg = vbroadcast<T>(mg[c]), vk = vbroadcast<T>(k[c]), vmean = vbroadcast<T>(save_mean[c]);
      for (; i + Simd<T>::W <= n; i += Simd<T>::W) {
        const V g = gv(i);
        if (grs) vstore(grs + i, g);
        vstore(gxs + i, (g - vmg - (vload(xs + i) - vmean) * vk) * va);
      }
      for (; i < n; ++i) {
        const T g = g1(i);
        if (grs) grs[i] = g;
        gxs[i] = (g - mg[c] - (xs[i] - save_mean[c]) * k[c]) * a[c];
      }
    } else {
      for (; i + Simd<T>::W <= n; i += Simd<T>::W) {
        const V g = gv(i);
        if (grs) vstore(grs + i, g);
        vstore(gxs + i, g * va);
      }
      for (; i < n; ++i) {
        const T g = g1(i);
        if (grs) grs[i] = g;
        gxs[i] = g * a[c];
      }
    }
  });
}

template <typename T>
void channel_sums(const BatchNormShape& s, const T* y, double* stats) {
  const Tasks tk(s);
  Workspace part_ws(checked_bytes(2 * imax(1, tk.count), sizeof(double)));
  Workspace tot_ws(checked_bytes(2 * imax(1, s.C), sizeof(double)));
  double* total = tot_ws.as<double>();
  chunk_sums(s, tk, y, y, static_cast<const T*>(nullptr), nullptr, nullptr, part_ws.as<double>());
  reduce_channels(s, tk, part_ws.as<double>(), total);
  for (int64_t c = 0; c < s.C; ++c) stats[c] = total[2 * c], stats[s.C + c] = total[2 * c + 1];
}

#define PYCONV_INSTANTIATE(T)                                                                                \
  template void batch_norm_forward<T>(const BatchNormShape&, const T*, const T*, const T*, T*, T*, T*, T*, T*, \
                                      bool, double, double, const double*, bool, double, const T*, uint64_t*); \
  template void batch_norm_backward<T>(const BatchNormShape&, const T*, const T*, const T*, const T*, const T*, \
                                       T*, T*, T*, bool, const T*, double, T*, const uint64_t*);            \
  template void channel_sums<T>(const BatchNormShape&, const T*, double*);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
