// Bindings of the ReLU kernels used by the fused conv-BN-ReLU op.
#include <pybind11/pybind11.h>

#include "bindings/buffers.h"
#include "cpu/relu.h"

namespace pyconv {

namespace {

template <typename T>
void relu_fwd(py::array& x) {
  T* p = out_buffer<T>(x, "input", static_cast<int64_t>(x.size()));
  const int64_t n = static_cast<int64_t>(x.size());
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(relu_forward<T>)(p, n);
}

template <typename T>
void relu_bwd(const py::array& gz, const py::array& z, py::array& gx) {
  const int64_t n = static_cast<int64_t>(z.size());
  const T* gzp = in_buffer<T>(gz, "grad_output", n);
  const T* zp = in_buffer<T>(z, "output", n);
  T* gxp = out_buffer<T>(gx, "grad_input", n);
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(relu_backward<T>)(gzp, zp, gxp, n);
}

}  // namespace

void bind_relu(py::module_& m) {
  m.def("relu_forward", [](py::array& x) {
    if (dtype_of(x, "input") == DType::f32) return relu_fwd<float>(x);
    return relu_fwd<double>(x);
  }, py::arg("x"), "x = max(x, 0) in place (NaN propagates).");
  m.def("relu_backward", [](const py::array& gz, const py::array& z, py::array& gx) {
    if (dtype_of(z, "output") == DType::f32) return relu_bwd<float>(gz, z, gx);
    return relu_bwd<double>(gz, z, gx);
  }, py::arg("grad_output"), py::arg("output"), py::arg("grad_input"));
}

}  // namespace pyconv
