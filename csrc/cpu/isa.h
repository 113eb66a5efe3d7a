// Every kernel source in csrc/cpu/ is compiled once per instruction set, into namespace
// pyconv::generic (baseline x86-64 / any CPU), pyconv::avx2 (AVX2 + FMA, 32-byte vectors) and
// pyconv::avx512 (AVX-512 F/VL/DQ/BW, 64-byte vectors: twice the lanes, 32 registers).
// Declarations are written once with PYCONV_FOR_EACH_ISA; callers pick the variant at run time
// with PYCONV_ISA_FN, so a wheel built on one machine runs on any other.
#pragma once

namespace pyconv {
// The instruction set the kernels run with (csrc/common/cpu_features.cpp): the best the CPU and
// the build have, or the one PYCONV_ISA names (generic, avx2, avx512; tests use it to cover every
// variant on one machine; PYCONV_FORCE_GENERIC=1 is PYCONV_ISA=generic).
enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };
Isa cpu_isa();
const char* isa_name(Isa isa);
}

#define PYCONV_FOR_EACH_ISA(...)                 \
  namespace pyconv {                             \
  namespace generic { __VA_ARGS__ }              \
  namespace avx2 { __VA_ARGS__ }                 \
  namespace avx512 { __VA_ARGS__ }               \
  }

#if defined(PYCONV_HAS_AVX512) && PYCONV_HAS_AVX512
#define PYCONV_ISA_FN(fn)                                                                  \
  (::pyconv::cpu_isa() == ::pyconv::Isa::avx512 ? &::pyconv::avx512::fn                   \
   : ::pyconv::cpu_isa() == ::pyconv::Isa::avx2 ? &::pyconv::avx2::fn : &::pyconv::generic::fn)
#elif defined(PYCONV_HAS_AVX2) && PYCONV_HAS_AVX2
#define PYCONV_ISA_FN(fn) (::pyconv::cpu_isa() == ::pyconv::Isa::avx2 ? &::pyconv::avx2::fn : &::pyconv::generic::fn)
#else
#define PYCONV_ISA_FN(fn) (&::pyconv::generic::fn)
#endif
