#pragma once
#include <cstdint>

#include "cpu/isa.h"

PYCONV_FOR_EACH_ISA(
  // x = max(x, 0) in place; NaN stays NaN (as torch.relu).
  template <typename T>
  void relu_forward(T* x, int64_t n);
  // gx = gz where z > 0 (or z is NaN), else 0: torch's threshold_backward on the ReLU output.
  template <typename T>
  void relu_backward(const T* gz, const T* z, T* gx, int64_t n);
)
