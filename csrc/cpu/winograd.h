#pragma once
#include "common/shapes.h"
#include "cpu/isa.h"

// Winograd F(m x m, 3 x 3), m in {2, 4}: 3x3 filters, stride 1, dilation 1, any padding and group
// count (the binding checks the shape). See csrc/cpu/winograd.cpp for the math.
PYCONV_FOR_EACH_ISA(
  template <typename T>
  void winograd_forward(const ConvShape& s, int m, const T* x, const T* w, const T* b, T* y);
  template <typename T>
  void winograd_backward_input(const ConvShape& s, int m, const T* gy, const T* w, T* gx);
  template <typename T>
  void winograd_backward_weight(const ConvShape& s, int m, const T* x, const T* gy, T* gw, T* gb);
)
