#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace pyconv {

// Batch norm over x[N][C][L] (L = product of the spatial sizes), normalized per channel c.
struct BatchNormShape {
  int64_t N = 0, C = 0, L = 0;
};

// A ReLU's mask bits (batch_norm_forward's relu_mask): ceil(L/64) uint64 words per (n, c) row, value
// l at bit l % 64 of the row's word l / 64.
inline int64_t relu_mask_words_per_row(int64_t L) { return (L + 63) / 64; }

}  // namespace pyconv

PYCONV_FOR_EACH_ISA(
  // weight, bias, running_mean, running_var may be null. training: batch statistics into
  // save_mean / save_invstd and, when given, running stats updated in place with momentum
  // (unbiased variance); eval: normalizes with the running stats and writes them to save_*.
  // stats (may be null): per-channel [sum x (C values), sum x^2 (C values)] already taken by the
  // producer of x, used instead of a statistics pass. residual (may be null): added after the
  // normalization (a residual block's tail). relu: y = min(max(bn(x) [+ residual], 0), relu_max)
  // (relu_max = infinity: ReLU; 6: ReLU6). relu_mask (may be null; with relu): N*C*ceil(L/64) words
  // of bits, bit l % 64 of word (n*C + c)*ceil(L/64) + l/64 set where the backward passes the
  // gradient (the mask relu_out gives it), for batch_norm_backward's relu_mask.
  template <typename T>
  void batch_norm_forward(const BatchNormShape& s, const T* x, const T* weight, const T* bias, T* running_mean,
                          T* running_var, T* y, T* save_mean, T* save_invstd, bool training, double momentum,
                          double eps, const double* stats, bool relu, double relu_max, const T* residual,
                          uint64_t* relu_mask);
  // weight may be null (= 1); gx, gw, gb may each be null (not wanted). relu_out (may be null): gy is
  // the gradient of relu_out = min(max(bn(x), 0), relu_max) and is masked by it: zero where
  // relu_out <= 0 or (relu_max finite) relu_out >= relu_max, as torch's threshold and hardtanh
  // backward. g_residual (may be null): the residual's gradient, gy through that mask. relu_mask
  // (may be null): the forward's mask bits, used instead of relu_out (which may then be null).
  template <typename T>
  void batch_norm_backward(const BatchNormShape& s, const T* gy, const T* x, const T* weight, const T* save_mean,
                           const T* save_invstd, T* gx, T* gw, T* gb, bool training, const T* relu_out,
                           double relu_max, T* g_residual, const uint64_t* relu_mask);
  // stats = [sum y per channel, sum y^2 per channel] in float64, fixed reduction order.
  template <typename T>
  void channel_sums(const BatchNormShape& s, const T* y, double* stats);
)
