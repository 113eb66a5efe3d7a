#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  // Whether the channel-blocked kernel takes this problem: at least one SIMD vector of output
  // channels per group (fewer would mostly multiply padding); an input group narrower than a vector
  // is one block of all its channels.
  template <typename T>
  bool conv_blocked_applies(const ConvShape& s);
  // The output channels per group it needs (the SIMD width: 8 float, 4 double).
  template <typename T>
  int conv_blocked_min_channels();
  // The filters blocked once for inference: conv_blocked_prepared_numel elements, a header then the
  // panels; conv_blocked_prepared_fits checks a buffer's header against a call.
  template <typename T>
  int64_t conv_blocked_prepared_numel(const ConvShape& s);
  template <typename T>
  void conv_blocked_prepare_weight(const ConvShape& s, const T* w, T* prepared);
  template <typename T>
  bool conv_blocked_prepared_fits(const ConvShape& s, const T* prepared);
  // grad-input of a convolution it takes, as its forward on gy with rotated, transposed filters: stride
  // 1 (any dilation) in one convolution, strides sh x sw (dilation 1, R >= sh, S >= sw) in sh*sw
  // stride-1 phases.
  template <typename T>
  bool conv_blocked_backward_input_applies(const ConvShape& s);
  template <typename T>
  void conv_blocked_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
  // stats (may be null): [sum y per channel, sum y^2 per channel] in float64, taken before ep.
  // prepared (may be null): conv_blocked_prepare_weight's buffer for w and s.
  template <typename T>
  void conv_blocked_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                            const T* prepared, const ConvEpilogue<T>& ep);
)
