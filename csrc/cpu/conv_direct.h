#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  // stats (may be null): [sum y per channel, sum y^2 per channel] in float64, taken in the epilogue
  // before ep (the inference activation and residual, cpu/epilogue.h). prepared (may be null): the
  // weights as conv_direct_prepare_weight left them.
  template <typename T>
  void conv_direct_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                           const T* prepared, const ConvEpilogue<T>& ep);
  // Weights prepared once for inference (the channel-blocked kernel's filter panels): their element
  // count, 0 where the kernel for s has nothing to prepare; the buffer; whether one fits s.
  template <typename T>
  int64_t conv_direct_prepared_numel(const ConvShape& s);
  template <typename T>
  void conv_direct_prepare_weight(const ConvShape& s, const T* w, T* prepared);
  template <typename T>
  bool conv_direct_prepared_fits(const ConvShape& s, const T* prepared);
  template <typename T>
  void conv_direct_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
  template <typename T>
  void conv_direct_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb);
)
