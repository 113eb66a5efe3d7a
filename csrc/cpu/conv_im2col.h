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
  // The weights packed once for inference: conv_im2col_prepared_numel elements, a header then the
  // GEMM's panels in layout conv_im2col_prepared_layout (0: W's A panels; 1: W^T's B panels, for
  // the pixels-as-rows forward of small outputs). Layout and sizes depend on the shape, T and the
  // ISA; conv_im2col_prepared_fits checks a prepared buffer's header against a call.
  template <typename T>
  int64_t conv_im2col_prepared_numel(const ConvShape& s);
  template <typename T>
  int conv_im2col_prepared_layout(const ConvShape& s);
  template <typename T>
  bool conv_im2col_prepared_fits(const ConvShape& s, const T* prepared);
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
