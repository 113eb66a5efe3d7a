// Batch norm over x[N][C][L]; per channel c, with M = N*L values:
//
//   training  mean = sum x / M,  var = sum (x-mean)^2 / M  (two passes, float64 accumulators),
//             invstd = 1/sqrt(var+eps); running_mean/var = (1-momentum)*r + momentum*(mean, var*M/(M-1))
//   eval      mean, var = running_mean, running_var
//   training with sums from the conv epilogue (stats[0][c] = sum x, stats[1][c] = sum x^2, float64):
//             mean = stats[0]/M,  var = max(stats[1]/M - mean^2, 0)   (no pass over x)
//   y = (x - mean) * invstd * w + b;  relu: y = max(y, 0) in the same sweep (NaN stays NaN)
//   backward  gb = sum gy,  gw = invstd * sum gy*(x-mean)
//             training: gx = w*invstd * (gy - gb/M - xhat * gw/M),  xhat = (x-mean)*invstd
//             eval:     gx = w*invstd * gy
//   relu_output z given (the op's output relu(y)): gy is replaced by (z <= 0 ? 0 : gy) wherever it is
//   read, in the reductions and in the gx sweep (no separate masking pass, no extra buffer).
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

// Statistics from the per-channel sums of the conv epilogue: mean, invstd and running stats, one
// thread per channel.
template <typename T>
PYCONV_GLOBAL void bn_stats_from_sums_kernel(BatchNormDims s, const double* sums, T* save_mean, T* save_invstd,
                                             T* running_mean, T* running_var, double momentum, double eps) {
  const int64_t M = s.N * s.L;
  for (int64_t c = global_thread_index(); c < s.C; c += global_thread_count()) {
    const double mean = sums[c] / double(M), sq = sums[s.C + c] / double(M) - mean * mean;
    const double var = sq > 0 ? sq : 0.0;  // cancellation can make E[x^2] - mean^2 slightly negative
    save_mean[c] = T(mean);
    save_invstd[c] = T(rsqrt_exact(var + eps));
    if (running_mean) running_mean[c] = T((1 - momentum) * double(running_mean[c]) + momentum * mean);
    if (running_var)
      running_var[c] =
          T((1 - momentum) * double(running_var[c]) + momentum * var * double(M) / double(M > 1 ? M - 1 : 1));
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
                                       const T* invstd, T* y, bool relu) {
  const int64_t total = s.N * s.C * s.L;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t c = (i / s.L) % s.C;
    const T scale = invstd[c] * (w ? w[c] : T(1));
    const T v = (x[i] - mean[c]) * scale + (b ? b[c] : T(0));
    y[i] = relu && v < T(0) ? T(0) : v;
  }
}

// The gradient reaching the batch norm: gy, or gy masked by the ReLU output z.
template <typename T>
PYCONV_DEVICE T bn_grad_in(const T* gy, const T* z, int64_t i) {
  return z && z[i] <= T(0) ? T(0) : gy[i];
}

// sums[c] = sum gy, sums[C+c] = sum gy*(x-mean); gb and gw from them.
template <typename T>
PYCONV_GLOBAL void bn_backward_reduce_kernel(BatchNormDims s, const T* gy, const T* x, const T* mean,
                                             const T* invstd, const T* z, T* sums, T* gw, T* gb) {
  PYCONV_SHARED_ARRAY(double, scratch, kReduceThreads);
  const int64_t c = block_x(), M = s.N * s.L;
  const double mu = double(mean[c]);
  double sg = 0, sgx = 0;
  for (int64_t j = thread_x(); j < M; j += kReduceThreads) {
    const int64_t at = ((j / s.L) * s.C + c) * s.L + j % s.L;
    const double g = double(bn_grad_in(gy, z, at));
    sg += g;
    sgx += g * (double(x[at]) - mu);
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
                                            const T* invstd, const T* z, const T* sums, T* gx, bool training) {
  const int64_t total = s.N * s.C * s.L;
  const T inv_m = T(1) / T(s.N * s.L);
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t c = (i / s.L) % s.C;
    const T scale = invstd[c] * (w ? w[c] : T(1));
    if (training) {
      const T xhat = (x[i] - mean[c]) * invstd[c];
      gx[i] = scale * (bn_grad_in(gy, z, i) - sums[c] * inv_m - xhat * sums[s.C + c] * inv_m);
    } else {
      gx[i] = scale * bn_grad_in(gy, z, i);
    }
  }
}

template <typename T>
void batch_norm_fprop(const BatchNormDims& s, const T* x, const T* w, const T* b, T* running_mean,
                      T* running_var, T* y, T* save_mean, T* save_invstd, bool training, double momentum,
                      double eps, bool relu, const double* stats, stream_t st) {
  if (training && stats)
    launch(&bn_stats_from_sums_kernel<T>, {elementwise_blocks(s.C), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "batch_norm_stats_from_sums", s, stats, save_mean, save_invstd, running_mean, running_var, momentum, eps);
  else if (training)
    launch(&bn_stats_kernel<T>, {grid_dim(s.C, 2147483647, "batch_norm_stats"), 1, 1}, {kReduceThreads, 1, 1},
           st, "batch_norm_stats", s, x, save_mean, save_invstd, running_mean, running_var, momentum, eps);
  else
    launch(&bn_eval_stats_kernel<T>, {elementwise_blocks(s.C), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "batch_norm_eval_stats", s.C, (const T*)running_mean, (const T*)running_var, save_mean, save_invstd, eps);
  launch(&bn_normalize_kernel<T>, {elementwise_blocks(s.N * s.C * s.L), 1, 1}, {kElementwiseThreads, 1, 1}, st,
         "batch_norm_normalize", s, x, w, b, (const T*)save_mean, (const T*)save_invstd, y, relu);
}

template <typename T>
void batch_norm_bprop(const BatchNormDims& s, const T* gy, const T* x, const T* w, const T* save_mean,
                      const T* save_invstd, const T* z, T* gx, T* gw, T* gb, T* ws, bool training, stream_t st) {
  if (training || gw || gb)
    launch(&bn_backward_reduce_kernel<T>, {grid_dim(s.C, 2147483647, "batch_norm_backward_reduce"), 1, 1},
           {kReduceThreads, 1, 1}, st, "batch_norm_backward_reduce", s, gy, x, save_mean, save_invstd, z, ws, gw, gb);
  if (gx)
    launch(&bn_backward_input_kernel<T>, {elementwise_blocks(s.N * s.C * s.L), 1, 1}, {kElementwiseThreads, 1, 1},
           st, "batch_norm_backward_input", s, gy, x, w, save_mean, save_invstd, z, (const T*)ws, gx,
           training);
}

}  // namespace kern
}  // namespace pyconv
