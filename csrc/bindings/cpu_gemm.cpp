#include <pybind11/pybind11.h>

namespace pyconv {
// The packed GEMM (and the im2col convolution built on it) is bound here when it lands.
void bind_gemm(pybind11::module_&) {}
}  // namespace pyconv
