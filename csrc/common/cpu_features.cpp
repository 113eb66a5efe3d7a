#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "cpu/isa.h"

namespace pyconv {

namespace {

Isa best_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();  // (libgcc also checks that the OS saves the wider registers)
#if defined(PYCONV_HAS_AVX512) && PYCONV_HAS_AVX512
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return Isa::avx512;
#endif
#if defined(PYCONV_HAS_AVX2) && PYCONV_HAS_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
#endif
  return Isa::generic;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = [] {
    const Isa best = best_isa();
    const char* force = std::getenv("PYCONV_FORCE_GENERIC");
    if (force && *force && *force != '0') return Isa::generic;
    const char* want = std::getenv("PYCONV_ISA");
    if (!want || !*want) return best;
    for (Isa i : {Isa::generic, Isa::avx2, Isa::avx512})
      if (std::strcmp(want, isa_name(i)) == 0) return int(i) <= int(best) ? i : best;  // never above the CPU's
    return best;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "generic";
}

}  // namespace pyconv
