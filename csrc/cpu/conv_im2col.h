#pragma once
#include <cstdint>

#include "common/shapes.h"
#include "cpu/isa.h"
#include "cpu/relu.h"

PYCONV_FOR_EACH_ISA(
  template <typename T>
  // stats (optional, 2 x K): per-channel float64 sum and sum of squares of y, taken in the GEMM epilogue.
  // prepared (optional): the weights as conv_im2col_prepare_weight packed them (then w is not read).
  // ep: the inference activation and residual, on each finished GEMM tile (after its stats).
  void conv_im2col_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                           const T* prepared, const ConvEpilogue<T>& ep);
  // The weights packed once into the GEMM's A panels, for inference: conv_im2col_prepared_numel
  // elements (the layout depends on T and the ISA).
  template <typename T>
  int64_t conv_im2col_prepared_numel(const ConvShape& s);
  template <typename T>
  void conv_im2col_prepare_weight(const ConvShape& s, const T* w, T* prepared);
  template <typename T>
  void conv_im2col_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
  template <typename T>
  void conv_im2col_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb);
  // Scratch bytes one call allocates; pass 0 = forward, 1 = grad-input, 2 = grad-weight.
  template <typename T>
  int64_t conv_im2col_workspace_bytes(const ConvShape& s, int pass);
)
