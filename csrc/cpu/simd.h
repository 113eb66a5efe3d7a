// Portable SIMD for kernel sources: GCC/Clang vector extensions, 32 bytes wide. Compiled with
// -mavx2 -mfma they become ymm registers and FMAs; without, the compiler lowers them to SSE2 pairs.
// Everything here lives in the per-ISA namespace so the two compilations never share a symbol.
#pragma once
#include <cstdint>
#include <cstring>

#ifndef PYCONV_ISA
#error "csrc/cpu kernel sources are compiled with -DPYCONV_ISA=<namespace> (see CMakeLists.txt)"
#endif

#define PYCONV_INLINE inline __attribute__((always_inline))

namespace pyconv {
namespace PYCONV_ISA {

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  static constexpr int W = 8;
  typedef float V __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  static constexpr int W = 4;
  typedef double V __attribute__((vector_size(32)));
};
template <typename T>
using vec_t = typename Simd<T>::V;

template <typename T>
PYCONV_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
PYCONV_INLINE void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// An initializer list compiles to one vbroadcastss/sd (not `V{} + x`: adding +0.0 turns -0.0 into
// +0.0, so the compiler must keep the add).
template <typename T>
PYCONV_INLINE vec_t<T> vbroadcast(T x);
template <>
PYCONV_INLINE vec_t<float> vbroadcast<float>(float x) { return vec_t<float>{x, x, x, x, x, x, x, x}; }
template <>
PYCONV_INLINE vec_t<double> vbroadcast<double>(double x) { return vec_t<double>{x, x, x, x}; }
template <typename T>
PYCONV_INLINE T vsum(vec_t<T> v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::W; ++i) s += v[i];
  return s;
}

PYCONV_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
PYCONV_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
PYCONV_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace PYCONV_ISA
}  // namespace pyconv
