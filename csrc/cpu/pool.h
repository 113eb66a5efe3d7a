#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace pyconv {

// A pooling problem over N*C planes of H x W with output P x Q; same field order as
// pyconv._args.PoolShape. pad_h / pad_w are top / left (bottom / right follow from P and Q).
struct PoolShape {
  int64_t N = 0, C = 0, H = 0, W = 0, P = 0, Q = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
};

}  // namespace pyconv

PYCONV_FOR_EACH_ISA(
  // indices may be null (values only); otherwise torch's flat per-plane index h*W+w.
  template <typename T>
  void max_pool2d_forward(const PoolShape& s, const T* x, T* y, int64_t* indices);
  // Writes all of gx. Returns the number of indices outside [0, H*W) (skipped), 0 when all are valid.
  template <typename T>
  int64_t max_pool2d_backward(const PoolShape& s, const T* gy, const int64_t* indices, T* gx);
  // divisor_override 0 = none.
  template <typename T>
  void avg_pool2d_forward(const PoolShape& s, const T* x, T* y, bool count_include_pad, int64_t divisor_override);
  template <typename T>
  void avg_pool2d_backward(const PoolShape& s, const T* gy, T* gx, bool count_include_pad, int64_t divisor_override);
)
