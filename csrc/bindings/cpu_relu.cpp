// Bindings of the activation kernels of the fused ops.
#include <pybind11/pybind11.h>

#include "bindings/buffers.h"
#include "cpu/relu.h"

namespace pyconv {

namespace {

template <typename T>
void activation_fwd(py::array& x, const py::object& residual, int act) {
  const int64_t n = static_cast<int64_t>(x.size());
  T* p = out_buffer<T>(x, "input", n);
  const T* r = opt_in_buffer<T>(residual, "residual", n);
  PYCONV_CHECK(act >= kActNone && act <= kActRelu6, "activation: index ", act,
               " is not 0 (none), 1 (relu) or 2 (relu6)");
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(activation_forward<T>)(p, r, act, n);
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
  m.def("activation_forward", [](py::array& x, const py::object& residual, int act) {
    if (dtype_of(x, "input") == DType::f32) return activation_fwd<float>(x, residual, act);
    return activation_fwd<double>(x, residual, act);
  }, py::arg("x"), py::arg("residual"), py::arg("activation"),
  "x = act(x + residual) in place; residual may be None; act: 0 none, 1 relu, 2 relu6 (NaN propagates).");
  m.def("relu_backward", [](const py::array& gz, const py::array& z, py::array& gx) {
    if (dtype_of(z, "output") == DType::f32) return relu_bwd<float>(gz, z, gx);
    return relu_bwd<double>(gz, z, gx);
  }, py::arg("grad_output"), py::arg("output"), py::arg("grad_input"));
}

}  // namespace pyconv
