#include <cstdlib>

namespace pyconv {

// PYCONV_FORCE_GENERIC=1 selects the portable kernels (tests use it to cover both variants).
bool cpu_has_avx2_fma() {
  static const bool has = [] {
    const char* force = std::getenv("PYCONV_FORCE_GENERIC");
    if (force && *force && *force != '0') return false;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return has;
}

}  // namespace pyconv
