// The inference epilogue of a fused convolution layer, applied by each forward kernel to output it
// has just written (still in L1/L2), so the activation costs no extra sweep over memory:
//   y = act(y + r)    r: an optional residual input laid out as y; act: none, ReLU (max(v, 0)) or
//                     ReLU6 (min(max(v, 0), 6)); comparisons are false for NaN, so NaN propagates
//                     as in torch
// activation_forward (relu.cpp) runs the same rule as a sweep of its own.
#pragma once
#include <cstdint>

#include "cpu/relu.h"
#include "cpu/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

template <int Act, typename V>
PYCONV_INLINE V activate(V v, V zero, V six) {
  if (Act >= kActRelu) v = v < zero ? zero : v;
  if (Act == kActRelu6) v = v > six ? six : v;
  return v;
}

// x[0:n] = act(x + r) (r may be null), serially: callers are already inside their parallel loops.
template <typename T, int Act, bool Residual>
PYCONV_INLINE void activate_run(T* x, const T* r, int64_t n) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  const V zero = V{}, six = vbroadcast(T(6));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V v = vload(x + i);
    if (Residual) v += vload(r + i);
    vstore(x + i, activate<Act>(v, zero, six));
  }
  for (; i < n; ++i) x[i] = activate<Act>(Residual ? x[i] + r[i] : x[i], T(0), T(6));
}

template <typename T>
void activate_any(T* x, const T* r, int act, int64_t n) {
  switch (act) {
    case kActNone:
      if (r) activate_run<T, kActNone, true>(x, r, n);
      return;
    case kActRelu:
      return r ? activate_run<T, kActRelu, true>(x, r, n) : activate_run<T, kActRelu, false>(x, r, n);
    default:
      return r ? activate_run<T, kActRelu6, true>(x, r, n) : activate_run<T, kActRelu6, false>(x, r, n);
  }
}

// p[0:n] = act(p + residual) for p inside ep.y.
template <typename T>
PYCONV_INLINE void epilogue_apply(const ConvEpilogue<T>& ep, T* p, int64_t n) {
  if (ep.active()) activate_any(p, ep.residual ? ep.residual + (p - ep.y) : nullptr, ep.act, n);
}

// act(v) for a run-time act index, on a vector or a scalar (zero and six of v's type).
template <typename V>
PYCONV_INLINE V activate_dyn(int act, V v, V zero, V six) {
  if (act == kActRelu) return activate<kActRelu>(v, zero, six);
  if (act == kActRelu6) return activate<kActRelu6>(v, zero, six);
  return v;
}

template <typename T>
PYCONV_INLINE vec_t<T> activate_vec(int act, vec_t<T> v) {
  return activate_dyn(act, v, vec_t<T>{}, vbroadcast(T(6)));
}

// The epilogue of one value v bound for *at (at inside ep.y).
template <typename T>
PYCONV_INLINE T epilogue_one(const ConvEpilogue<T>& ep, T v, const T* at) {
  if (ep.residual) v += ep.residual[at - ep.y];
  return activate_dyn(ep.act, v, T(0), T(6));
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
