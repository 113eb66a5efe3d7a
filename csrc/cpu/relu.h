#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace pyconv {
// The activation indices: the order of pyconv.problem.ACTIVATIONS.
enum Activation : int { kActNone = 0, kActRelu = 1, kActRelu6 = 2 };

// A forward kernel's inference epilogue, y = act(y + residual) on what it has just written
// (cpu/epilogue.h applies it). y: the output tensor's base; the residual has y's layout.
template <typename T>
struct ConvEpilogue {
  int act = kActNone;
  const T* residual = nullptr;
  const T* y = nullptr;
  bool active() const { return act != kActNone || residual != nullptr; }
};
}  // namespace pyconv

PYCONV_FOR_EACH_ISA(
  // x = act(x + residual) in place (residual may be null); NaN stays NaN (as torch.relu / relu6).
  template <typename T>
  void activation_forward(T* x, const T* residual, int act, int64_t n);
  // gx = gz where z > 0 (or z is NaN), else 0: torch's threshold_backward on the ReLU output.
  template <typename T>
  void relu_backward(const T* gz, const T* z, T* gx, int64_t n);
)
