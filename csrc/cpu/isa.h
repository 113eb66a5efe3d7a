// Every kernel source in csrc/cpu/ is compiled once per instruction set, into namespace
// pyconv::generic (baseline x86-64 / any CPU) and pyconv::avx2 (AVX2 + FMA). Declarations are
// written once with PYCONV_FOR_EACH_ISA; callers pick the variant at run time with
// PYCONV_ISA_FN, so a wheel built on one machine runs on any other.
#pragma once

namespace pyconv {
bool cpu_has_avx2_fma();  // csrc/common/cpu_features.cpp
}

#define PYCONV_FOR_EACH_ISA(...)                 \
  namespace pyconv {                             \
  namespace generic { __VA_ARGS__ }              \
  namespace avx2 { __VA_ARGS__ }                 \
  }

#if defined(PYCONV_HAS_AVX2) && PYCONV_HAS_AVX2
#define PYCONV_ISA_FN(fn) (::pyconv::cpu_has_avx2_fma() ? &::pyconv::avx2::fn : &::pyconv::generic::fn)
#else
#define PYCONV_ISA_FN(fn) (&::pyconv::generic::fn)
#endif
