// Direct convolution on the GPU, NCHW, any stride / padding / dilation / groups; one thread per
// output element, 64-bit indices, grid-stride loops.
//
//   fprop  y[n,k,p,q]  = b[k] + sum_{c<Cg,r,s} w[k,c,r,s] * x[n, g*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw]
//   dgrad  gx[n,g*Cg+c,h,v] = sum_{k<Kg,r,s : h+ph-r*dh = p*sh, v+pw-s*dw = q*sw, 0<=p<P, 0<=q<Q}
//                                gy[n, g*Kg+k, p, q] * w[g*Kg+k, c, r, s]
//          (a gather per input element: no atomics, deterministic)
//   wgrad  gw[k,c,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, g*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw]
//          (one thread per weight element, serial over n,p,q)
//   bias   gb[k] = sum_{n,p,q} gy[n,k,p,q]   (one block per k, block_sum in double; every algorithm's)
//   stats  (fprop for conv-BN) also stats[0][k] = sum_{n,p,q} y[n,k,p,q], stats[1][k] = sum y^2 in float64:
//          block (k, part) computes a strided share of channel k's outputs and block_sums them into
//          ws[.][part][k]; conv_stats_sum_kernel adds the parts in order (deterministic).
#pragma once
#include "cuda/block_reduce.cuh"
#include "cuda/kernels.h"
#include "cuda/launch.h"

namespace pyconv {
namespace kern {

constexpr int kElementwiseThreads = 256;

// Enough blocks to fill any current GPU; grid-stride loops cover the rest.
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t b = ceil_div(n, kElementwiseThreads);
  return unsigned(b < 8192 ? b : 8192);
}

// y[n,k,p,q] (fprop of one output element).
template <typename T>
PYCONV_DEVICE T conv_direct_output(const ConvShape& s, const T* x, const T* w, const T* b, int64_t n, int64_t k,
                                   int64_t p, int64_t q) {
  const int64_t Cg = s.C / s.G, Kg = s.K / s.G;
  const int64_t g = k / Kg;
  const int64_t h0 = p * s.stride_h - s.pad_h, v0 = q * s.stride_w - s.pad_w;
  T acc = b ? b[k] : T(0);
  for (int64_t c = 0; c < Cg; ++c) {
    const T* xc = x + ((n * s.C + g * Cg + c) * s.H) * s.W;
    const T* wc = w + ((k * Cg + c) * s.R) * s.S;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t h = h0 + r * s.dil_h;
      if (h < 0 || h >= s.H) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t v = v0 + t * s.dil_w;
        if (v < 0 || v >= s.W) continue;
        acc += wc[r * s.S + t] * xc[h * s.W + v];
      }
    }
  }
  return acc;
}

template <typename T>
PYCONV_GLOBAL void conv_direct_fprop_kernel(ConvShape s, const T* x, const T* w, const T* b, T* y) {
  const int64_t total = s.N * s.K * s.P * s.Q;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t q = i % s.Q, p = (i / s.Q) % s.P, k = (i / (s.Q * s.P)) % s.K, n = i / (s.Q * s.P * s.K);
    y[i] = conv_direct_output(s, x, w, b, n, k, p, q);
  }
}

// Block (k = blockIdx.x, part = blockIdx.y): outputs j = part*256 + t, stepping by parts*256 over
// channel k's N*P*Q outputs; the block's float64 sums of y and y^2 go to ws[0][part][k], ws[1][part][k].
// kCompute: the direct conv computes and writes y here; else y was written by another algorithm
// (Winograd) and is only read.
template <typename T, bool kCompute>
PYCONV_GLOBAL void conv_direct_fprop_stats_kernel(ConvShape s, const T* x, const T* w, const T* b, T* y,
                                                  double* ws, int64_t parts) {
  PYCONV_SHARED_ARRAY(double, scratch, kReduceThreads);
  const int64_t k = block_x(), part = block_y(), PQ = s.P * s.Q;
  double sum = 0, sq = 0;
  for (int64_t j = part * kReduceThreads + thread_x(); j < s.N * PQ; j += parts * kReduceThreads) {
    const int64_t n = j / PQ, pq = j % PQ;
    T v;
    if (kCompute) {
      v = conv_direct_output(s, x, w, b, n, k, pq / s.Q, pq % s.Q);
      y[(n * s.K + k) * PQ + pq] = v;
    } else {
      v = y[(n * s.K + k) * PQ + pq];
    }
    sum += double(v);
    sq += double(v) * double(v);
  }
  sum = block_sum(sum, scratch);
  sq = block_sum(sq, scratch);
  if (thread_x() == 0) {
    ws[part * s.K + k] = sum;
    ws[(parts + part) * s.K + k] = sq;
  }
}

// stats[i] = sum_{j < parts} ws[i / K][j][i % K], in order j = 0, 1, ... (i over [2][K]).
// (A = double; a template so that the header can define it in every translation unit.)
template <typename A>
PYCONV_GLOBAL void conv_stats_sum_kernel(const A* ws, A* stats, int64_t K, int64_t parts) {
  for (int64_t i = global_thread_index(); i < 2 * K; i += global_thread_count()) {
    const A* src = ws + (i / K) * parts * K + i % K;
    A acc = 0;
    for (int64_t j = 0; j < parts; ++j) acc += src[j * K];
    stats[i] = acc;
  }
}

inline void conv_stats_sum(const ConvShape& s, const double* ws, double* stats, int64_t parts, stream_t st) {
  launch(&conv_stats_sum_kernel<double>, {elementwise_blocks(2 * s.K), 1, 1}, {kElementwiseThreads, 1, 1}, st,
         "conv_fprop_stats_sum", ws, stats, s.K, parts);
}

template <typename T>
PYCONV_GLOBAL void conv_direct_dgrad_kernel(ConvShape s, const T* gy, const T* w, T* gx) {
  const int64_t Cg = s.C / s.G, Kg = s.K / s.G;
  const int64_t total = s.N * s.C * s.H * s.W;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t v = i % s.W, h = (i / s.W) % s.H, ci = (i / (s.W * s.H)) % s.C, n = i / (s.W * s.H * s.C);
    const int64_t g = ci / Cg, c = ci % Cg;
    T acc = T(0);
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t ph = h + s.pad_h - r * s.dil_h;
      if (ph < 0 || ph % s.stride_h) continue;
      const int64_t p = ph / s.stride_h;
      if (p >= s.P) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t qw = v + s.pad_w - t * s.dil_w;
        if (qw < 0 || qw % s.stride_w) continue;
        const int64_t q = qw / s.stride_w;
        if (q >= s.Q) continue;
        for (int64_t k = 0; k < Kg; ++k) {
          const int64_t ko = g * Kg + k;
          acc += gy[((n * s.K + ko) * s.P + p) * s.Q + q] * w[((ko * Cg + c) * s.R + r) * s.S + t];
        }
      }
    }
    gx[i] = acc;
  }
}

template <typename T>
PYCONV_GLOBAL void conv_direct_wgrad_kernel(ConvShape s, const T* x, const T* gy, T* gw) {
  const int64_t Cg = s.C / s.G, Kg = s.K / s.G;
  const int64_t total = s.K * Cg * s.R * s.S;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t t = i % s.S, r = (i / s.S) % s.R, c = (i / (s.S * s.R)) % Cg, k = i / (s.S * s.R * Cg);
    const int64_t g = k / Kg;
    T acc = T(0);
    for (int64_t n = 0; n < s.N; ++n) {
      const T* xc = x + ((n * s.C + g * Cg + c) * s.H) * s.W;
      const T* gyk = gy + ((n * s.K + k) * s.P) * s.Q;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
        if (h < 0 || h >= s.H) continue;
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t v = q * s.stride_w - s.pad_w + t * s.dil_w;
          if (v < 0 || v >= s.W) continue;
          acc += gyk[p * s.Q + q] * xc[h * s.W + v];
        }
      }
    }
    gw[i] = acc;
  }
}

// gb[k]: block k sums its channel of gy over n and the P*Q plane, in double whatever T (the
// grad-bias of every algorithm: direct, implicit GEMM and Winograd all call conv_bias_grad).
template <typename T>
PYCONV_GLOBAL void conv_bias_grad_kernel(ConvShape s, const T* gy, T* gb) {
  PYCONV_SHARED_ARRAY(double, scratch, kReduceThreads);
  const int64_t k = block_x(), PQ = s.P * s.Q;
  double acc = 0;
  for (int64_t j = thread_x(); j < s.N * PQ; j += kReduceThreads) {
    const int64_t n = j / PQ, pq = j % PQ;
    acc += double(gy[(n * s.K + k) * PQ + pq]);
  }
  acc = block_sum(acc, scratch);
  if (thread_x() == 0) gb[k] = T(acc);
}

template <typename T>
void conv_bias_grad(const ConvShape& s, const T* gy, T* gb, stream_t st) {
  launch(&conv_bias_grad_kernel<T>, {grid_dim(s.K, 2147483647, "conv_bias_grad"), 1, 1},
         {kReduceThreads, 1, 1}, st, "conv_bias_grad", s, gy, gb);
}

template <typename T>
void conv_direct_fprop(const ConvShape& s, const T* x, const T* w, const T* b, T* y, stream_t st) {
  launch(&conv_direct_fprop_kernel<T>, {elementwise_blocks(s.N * s.K * s.P * s.Q), 1, 1},
         {kElementwiseThreads, 1, 1}, st, "conv_direct_fprop", s, x, w, b, y);
}

template <typename T>
void conv_direct_fprop_stats(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                             double* ws, stream_t st) {
  const int64_t parts = conv_direct_stats_parts(s);
  const Dim3 grid{grid_dim(s.K, 2147483647, "conv_direct_fprop_stats"), unsigned(parts), 1};
  launch(&conv_direct_fprop_stats_kernel<T, true>, grid, {kReduceThreads, 1, 1}, st, "conv_direct_fprop_stats", s,
         x, w, b, y, ws, parts);
  conv_stats_sum(s, ws, stats, parts, st);
}

template <typename T>
void conv_output_stats(const ConvShape& s, T* y, double* stats, double* ws, stream_t st) {
  const int64_t parts = conv_direct_stats_parts(s);
  const Dim3 grid{grid_dim(s.K, 2147483647, "conv_output_stats"), unsigned(parts), 1};
  launch(&conv_direct_fprop_stats_kernel<T, false>, grid, {kReduceThreads, 1, 1}, st, "conv_output_stats", s,
         static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), y, ws,
         parts);
  conv_stats_sum(s, ws, stats, parts, st);
}

template <typename T>
void conv_direct_dgrad(const ConvShape& s, const T* gy, const T* w, T* gx, stream_t st) {
  launch(&conv_direct_dgrad_kernel<T>, {elementwise_blocks(s.N * s.C * s.H * s.W), 1, 1},
         {kElementwiseThreads, 1, 1}, st, "conv_direct_dgrad", s, gy, w, gx);
}

template <typename T>
void conv_direct_wgrad(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb, stream_t st) {
  if (gw)
    launch(&conv_direct_wgrad_kernel<T>, {elementwise_blocks(s.K * (s.C / s.G) * s.R * s.S), 1, 1},
           {kElementwiseThreads, 1, 1}, st, "conv_direct_wgrad", s, x, gy, gw);
  if (gb) conv_bias_grad(s, gy, gb, st);
}

}  // namespace kern
}  // namespace pyconv
