// The activations of the fused ops.
//   forward   x = act(x + r)   r: an optional residual input; act: none, ReLU (max(v, 0)) or ReLU6
//             (min(max(v, 0), 6)); comparisons are false for NaN, so NaN propagates as in torch
//   backward  gx = z <= 0 ? 0 : gz     (ReLU; the mask is recomputed from the output, nothing stored)
#include "cpu/relu.h"

#include "common/runtime.h"
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

template <int Act, typename V>
PYCONV_INLINE V activate(V v, V zero, V six) {
  if (Act >= kActRelu) v = v < zero ? zero : v;
  if (Act == kActRelu6) v = v > six ? six : v;
  return v;
}

template <typename T, int Act, bool Residual>
void activation_forward_impl(T* x, const T* r, int64_t n) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  for_blocks(n, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    const V zero = V{}, six = vbroadcast(T(6));
    for (; i + W <= hi; i += W) {
      V v = vload(x + i);
      if (Residual) v += vload(r + i);
      vstore(x + i, activate<Act>(v, zero, six));
    }
    for (; i < hi; ++i) x[i] = activate<Act>(Residual ? x[i] + r[i] : x[i], T(0), T(6));
  });
}

template <typename T>
void activation_forward(T* x, const T* residual, int act, int64_t n) {
  const bool res = residual != nullptr;
  switch (act) {
    case kActNone:
      return res ? activation_forward_impl<T, kActNone, true>(x, residual, n)
                 : activation_forward_impl<T, kActNone, false>(x, residual, n);
    case kActRelu:
      return res ? activation_forward_impl<T, kActRelu, true>(x, residual, n)
                 : activation_forward_impl<T, kActRelu, false>(x, residual, n);
    default:
      return res ? activation_forward_impl<T, kActRelu6, true>(x, residual, n)
                 : activation_forward_impl<T, kActRelu6, false>(x, residual, n);
  }
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
