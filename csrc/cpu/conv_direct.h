#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  // stats (may be null): [sum y per channel, sum y^2 per channel] in float64, taken in the epilogue
  // before ep (the inference activation and residual, cpu/epilogue.h).
  template <typename T>
  void conv_direct_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                           const ConvEpilogue<T>& ep);
  template <typename T>
  void conv_direct_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
  template <typename T>
  void conv_direct_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb);
)
