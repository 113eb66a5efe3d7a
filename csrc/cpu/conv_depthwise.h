#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  // Whether the depthwise kernels take this problem: one input and one output channel per group.
  bool conv_depthwise_applies(const ConvShape& s);
  // stats (may be null): [sum y per channel, sum y^2 per channel] in float64, taken in the epilogue.
  template <typename T>
  void conv_depthwise_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                              const ConvEpilogue<T>& ep);
  template <typename T>
  void conv_depthwise_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
  template <typename T>
  void conv_depthwise_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb);
)
