#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  // Whether the channel-blocked kernel takes this problem: at least one SIMD vector of channels
  // per group on each side (narrower groups would mostly multiply padding).
  template <typename T>
  bool conv_blocked_applies(const ConvShape& s);
  // stats (may be null): [sum y per channel, sum y^2 per channel] in float64, taken before ep.
  template <typename T>
  void conv_blocked_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                            const ConvEpilogue<T>& ep);
)
