// pyconv._C_cuda: the CUDA kernels (csrc/cuda). Built whenever CMake finds a CUDA compiler.
#include <pybind11/pybind11.h>
#include <cuda_runtime_api.h>

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pyconv CUDA kernels";
  m.def("device_count", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }, "Number of CUDA devices visible to the runtime (0 without a GPU or driver).");
  m.attr("kernels") = pybind11::list();
}
