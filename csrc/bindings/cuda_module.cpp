// pyconv._C_cuda: the CUDA kernels (csrc/cuda). Built whenever CMake finds a CUDA compiler.
#include <pybind11/pybind11.h>
#include <cuda_runtime_api.h>

namespace pyconv {
void bind_cuda_ops(pybind11::module_& m);
void register_error_translator();
}  // namespace pyconv

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pyconv CUDA kernels";
  pyconv::register_error_translator();
  m.def("device_count", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }, "Number of CUDA devices visible to the runtime (0 without a GPU or driver).");
  pyconv::bind_cuda_ops(m);
}
