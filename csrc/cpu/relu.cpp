// The activations of the fused ops, each as a sweep of its own.
//   forward   x = act(x + r)   (the rule is written once, in cpu/epilogue.h)
//   backward  gx = z <= 0 ? 0 : gz     (ReLU; the mask is recomputed from the output, nothing stored)
#include "cpu/relu.h"

#include "common/runtime.h"
#include "cpu/epilogue.h"
#include "cpu/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

namespace {
constexpr int64_t kBlock = 1 << 16;  // elements per parallel task

// body(lo, hi) over [0, n) in fixed blocks, in parallel.
template <typename Body>
void for_blocks(int64_t n, Body body) {
  const int64_t blocks = ceil_div(n, kBlock);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) body(b * kBlock, imin(n, b * kBlock + kBlock));
}
}  // namespace

template <typename T>
void activation_forward(T* x, const T* residual, int act, int64_t n) {
  for_blocks(n, [&](int64_t lo, int64_t hi) { activate_any(x + lo, residual ? residual + lo : nullptr, act, hi - lo); });
}

template <typename T>
void relu_backward(const T* gz, const T* z, T* gx, int64_t n) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  for_blocks(n, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    const V zero = V{};
    for (; i + W <= hi; i += W) {
      const V zv = vload(z + i), gv = vload(gz + i);
      vstore(gx + i, zv <= zero ? zero : gv);
    }
    for (; i < hi; ++i) gx[i] = z[i] <= T(0) ? T(0) : gz[i];
  });
}

template void activation_forward<float>(float*, const float*, int, int64_t);
template void activation_forward<double>(double*, const double*, int, int64_t);
template void relu_backward<float>(const float*, const float*, float*, int64_t);
template void relu_backward<double>(const double*, const double*, double*, int64_t);

}  // namespace PYCONV_ISA
}  // namespace pyconv
