// Batch norm over x[N][C][L]; per channel c, with M = N*L values:
//
//   training  mean = sum x / M,  var = sum (x-mean)^2 / M  (two passes, float64 accumulators),
//             invstd = 1/sqrt(var+eps); running_mean/var = (1-momentum)*r + momentum*(mean, var*M/(M-1))
//   eval      mean, var = running_mean, running_var
//   y = (x - mean) * invstd * w + b
//   backward  gb = sum gy,  gw = invstd * sum gy*(x-mean)
//             training: gx = w*invstd * (gy - gb/M - xhat * gw/M),  xhat = (x-mean)*invstd
//             eval:     gx = w*invstd * gy
// One block per channel for the statistics (block_sum: per-thread serial sums, then a fixed tree,
// deterministic); elementwise grid-stride kernels for y and gx.
#pragma once
#include <cmath>

#include "cuda/conv_direct.cuh"

namespace pyconv {
namespace kern {

PYCONV_DEVICE double rsqrt_exact(double v) { return 1.0 / sqrt(v); }

template <typename T>
PYCONV_GLOBAL void bn_stats_kernel(BatchNormDims s, const T* x, T* save_mean, T* save_invstd, T* running_mean,
                                   T* running_var, double momentum, double eps) {
  PYCONV_SHARED_ARRAY(double, scratch, kReduceThreads);
  const int64_t c = block_x(), M = s.N * s.L;
  double sum = 0;
  for (int64_t j = thread_x(); j < M; j += kReduceThreads) sum += double(x[((j / s.L) * s.C + c) * s.L + j % s.L]);
  const double mean = block_sum(sum, scratch) / double(M);
  double sq = 0;
  for (int64_t j = thread_x(); j < M; j += kReduceThreads) {
    const double d = double(x[((j / s.L) * s.C + c) * s.L + j % s.L]) - mean;
    sq += d * d;
  }
  const double m2 = block_sum(sq, scratch);
  if (thread_x() == 0) {
    save_mean[c] = T(mean);
    save_invstd[c] = T(rsqrt_exact(m2 / double(M) + eps));
    if (running_mean) running_mean[c] = T((1 - momentum) * double(running_mean[c]) + momentum * mean);
    if (running_var)
      running_var[c] = T((1 - momentum) * double(running_var[c]) + momentum * m2 / double(M > 1 ? M - 1 : 1));
  }
}

template <typename T>
PYCONV_GLOBAL void bn_eval_stats_kernel(int64_t C, const T* running_mean, const T* running_var, T* save_mean,
                                        T* save_invstd, double eps) {
  for (int64_t c = global_thread_index(); c < C; c += global_thread_count()) {
    save_mean[c] = running_mean[c];
    save_invstd[c] = T(rsqrt_exact(double(running_var[c]) + eps));
  }
}

template <typename T>
PYCONV_GLOBAL void bn_normalize_kernel(BatchNormDims s, const T* x, const T* w, const T* b, const T* mean,
                                       const T* invstd, T* y) {
  const int64_t total = s.N * s.C * s.L;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t c = (i / s.L) % s.C;
    const T scale = invstd[c] * (w ? w[c] : T(1));
    y[i] = (x[i] - mean[c]) * scale + (b ? b[c] : T(0));
  }
}

// sums[c] = sum gy, sums[C+c] = sum gy*(x-mean); gb and gw from them.
template <typename T>
PYCONV_GLOBAL void bn_backward_reduce_kernel(BatchNormDims s, const T* gy, const T* x, const T* mean,
                                             const T* invstd, T* sums, T* gw, T* gb) {
  PYCONV_SHARED_ARRAY(double, scratch, kReduceThreads);
  const int64_t c = block_x(), M = s.N * s.L;
  const double mu = double(mean[c]);
  double sg = 0, sgx = 0;
  for (int64_t j = thread_x(); j < M; j += kReduceThreads) {
    const int64_t at = ((j / s.L) * s.C + c) * s.L + j % s.L;
    sg += double(gy[at]);
    sgx += double(gy[at]) * (double(x[at]) - mu);
  }
  sg = block_sum(sg, scratch);
  sgx = block_sum(sgx, scratch);
  if (thread_x() == 0) {
    sums[c] = T(sg);
    sums[s.C + c] = T(sgx * double(invstd[c]));  // sum gy*xhat
    if (gb) gb[c] = T(sg);
    if (gw) gw[c] = T(sgx * double(invstd[c]));
  }
}

template <typename T>
PYCONV_GLOBAL void bn_backward_input_kernel(BatchNormDims s, const T* gy, const T* x, const T* w, const T* mean,
                                            const T* invstd, const T* sums, T* gx, bool training) {
  const int64_t total = s.N * s.C * s.L;
  const T inv_m = T(1) / T(s.N * s.L);
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t c = (i / s.L) % s.C;
    const T scale = invstd[c] * (w ? w[c] : T(1));
    if (training) {
      const T xhat = (x[i] - mean[c]) * invstd[c];
      gx[i] = scale * (gy[i] - sums[c] * inv_m - xhat * sums[s.C + c] * inv_m);
    } else {
      gx[i] = scale * gy[i];
    }
  }
}

template <typename T>
void batch_norm_fprop(const BatchNormDims& s, const T* x, const T* w, const T* b, T* running_mean,
                      T* running_var, T* y, T* save_mean, T* save_invstd, bool training, double momentum,
                      double eps, stream_t st) {
  if (training)
    launch(&bn_stats_kernel<T>, {grid_dim(s.C, 2147483647, "batch_norm_stats"), 1, 1}, {kReduceThreads, 1, 1},
           st, "batch_norm_stats", s, x, save_mean, save_invstd, running_mean, running_var, momentum, eps);
  else
    launch(&bn_eval_stats_kernel<T>, {elementwise_blocks(s.C), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "batch_norm_eval_stats", s.C, (const T*)running_mean, (const T*)running_var, save_mean, save_invstd, eps);
  launch(&bn_normalize_kernel<T>, {elementwise_blocks(s.N * s.C * s.L), 1, 1}, {kElementwiseThreads, 1, 1}, st,
         "batch_norm_normalize", s, x, w, b, (const T*)save_mean, (const T*)save_invstd, y);
}

template <typename T>
void batch_norm_bprop(const BatchNormDims& s, const T* gy, const T* x, const T* w, const T* save_mean,
                      const T* save_invstd, T* gx, T* gw, T* gb, T* ws, bool training, stream_t st) {
  if (training || gw || gb)
    launch(&bn_backward_reduce_kernel<T>, {grid_dim(s.C, 2147483647, "batch_norm_backward_reduce"), 1, 1},
           {kReduceThreads, 1, 1}, st, "batch_norm_backward_reduce", s, gy, x, save_mean, save_invstd, ws, gw, gb);
  if (gx)
    launch(&bn_backward_input_kernel<T>, {elementwise_blocks(s.N * s.C * s.L), 1, 1}, {kElementwiseThreads, 1, 1},
           st, "batch_norm_backward_input", s, gy, x, w, save_mean, save_invstd, (const T*)ws, gx, training);
}

}  // namespace kern
}  // namespace pyconv
