#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

// Winograd F(m x m, 3 x 3), m in {2, 4}: 3x3 filters, stride 1, dilation 1, any padding and group
// count (the binding checks the shape). See csrc/cpu/winograd.cpp for the math.
PYCONV_FOR_EACH_ISA(
  // The filters transformed for inference (U = G g G^T in the kernels' panel layout, which depends
  // on T and the ISA): winograd_filters_numel elements, filled by winograd_prepare_filters.
  template <typename T>
  int64_t winograd_filters_numel(const ConvShape& s, int m);
  template <typename T>
  void winograd_prepare_filters(const ConvShape& s, int m, const T* w, T* U);
  // prepared: filters from winograd_prepare_filters (then w is not read), or null. ep: the inference
  // activation and residual, applied as each output tile is stored.
  template <typename T>
  void winograd_forward(const ConvShape& s, int m, const T* x, const T* w, const T* prepared, const T* b, T* y,
                        const ConvEpilogue<T>& ep);
  template <typename T>
  void winograd_backward_input(const ConvShape& s, int m, const T* gy, const T* w, T* gx);
  template <typename T>
  void winograd_backward_weight(const ConvShape& s, int m, const T* x, const T* gy, T* gw, T* gb);
)
