// Bindings of the Winograd F(m x m, 3 x 3) kernels: shape and tile checks, buffer checks, GIL
// released, ISA dispatch.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/buffers.h"
#include "bindings/epilogue.h"
#include "cpu/batch_norm.h"
#include "cpu/winograd.h"

namespace pyconv {

namespace {

struct WinogradBuffers {
  int64_t x, w, y;
};

WinogradBuffers winograd_sizes(const ConvShape& s, int m) {
  check_conv_shape(s);
  PYCONV_CHECK(m == 2 || m == 4, "winograd: output tile m=", m, " must be 2 or 4");
  PYCONV_CHECK(s.R == 3 && s.S == 3, "winograd: needs a 3x3 kernel, got ", s.R, "x", s.S);
  PYCONV_CHECK(s.stride_h == 1 && s.stride_w == 1, "winograd: needs stride 1, got (", s.stride_h, ", ",
               s.stride_w, ")");
  PYCONV_CHECK(s.dil_h == 1 && s.dil_w == 1, "winograd: needs dilation 1, got (", s.dil_h, ", ", s.dil_w, ")");
  return {checked_numel({s.N, s.C, s.H, s.W}), checked_numel({s.K, s.Cg(), 3, 3}),
          checked_numel({s.N, s.K, s.P, s.Q})};
}

template <typename T>
void forward(const ConvShape& s, int m, const py::array& x, const py::array& w, const py::object& b,
             py::array& y, const py::object& stats, const py::object& prepared, const py::object& residual, int act) {
  const WinogradBuffers n = winograd_sizes(s, m);
  const T* xp = in_buffer<T>(x, "input", n.x);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  const T* bp = opt_in_buffer<T>(b, "bias", s.K);
  const T* up = opt_in_buffer<T>(prepared, "prepared", PYCONV_ISA_FN(winograd_filters_numel<T>)(s, m));
  T* yp = out_buffer<T>(y, "output", n.y);
  double* sp = opt_out_buffer<double>(stats, "stats", 2 * s.K);
  const ConvEpilogue<T> ep = conv_epilogue<T>(residual, act, n.y, yp, sp != nullptr);
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(winograd_forward<T>)(s, m, xp, wp, up, bp, yp, ep);
  if (sp) PYCONV_ISA_FN(channel_sums<T>)(BatchNormShape{s.N, s.K, s.P * s.Q}, yp, sp);  // no epilogue hook
}

template <typename T>
void prepare_filters(const ConvShape& s, int m, const py::array& w, py::array& u) {
  const WinogradBuffers n = winograd_sizes(s, m);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  T* up = out_buffer<T>(u, "prepared", PYCONV_ISA_FN(winograd_filters_numel<T>)(s, m));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(winograd_prepare_filters<T>)(s, m, wp, up);
}

template <typename T>
void backward_input(const ConvShape& s, int m, const py::array& gy, const py::array& w, py::array& gx) {
  const WinogradBuffers n = winograd_sizes(s, m);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  T* gxp = out_buffer<T>(gx, "grad_input", n.x);
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(winograd_backward_input<T>)(s, m, gyp, wp, gxp);
}

template <typename T>
void backward_weight(const ConvShape& s, int m, const py::array& x, const py::array& gy, const py::object& gw,
                     const py::object& gb) {
  const WinogradBuffers n = winograd_sizes(s, m);
  const T* xp = in_buffer<T>(x, "input", n.x);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  T* gwp = opt_out_buffer<T>(gw, "grad_weight", n.w);
  T* gbp = opt_out_buffer<T>(gb, "grad_bias", s.K);
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(winograd_backward_weight<T>)(s, m, xp, gyp, gwp, gbp);
}

}  // namespace

void bind_winograd(py::module_& m) {
  m.def("conv_winograd_forward", [](const ConvShape& s, int tile, const py::array& x, const py::array& w,
                                    const py::object& b, py::array& y, const py::object& stats,
                                    const py::object& prepared, const py::object& residual, int act) {
    if (dtype_of(x, "input") == DType::f32) return forward<float>(s, tile, x, w, b, y, stats, prepared, residual, act);
    return forward<double>(s, tile, x, w, b, y, stats, prepared, residual, act);
  }, py::arg("shape"), py::arg("tile"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("stats") = py::none(), py::arg("prepared") = py::none(), py::arg("residual") = py::none(),
     py::arg("activation") = 0);
  m.def("conv_winograd_filters_numel", [](const ConvShape& s, int tile, const std::string& dtype) {
    winograd_sizes(s, tile);
    PYCONV_CHECK(dtype == "float32" || dtype == "float64", "dtype=", dtype, ": expected float32 or float64");
    return dtype == "float32" ? PYCONV_ISA_FN(winograd_filters_numel<float>)(s, tile)
                              : PYCONV_ISA_FN(winograd_filters_numel<double>)(s, tile);
  }, py::arg("shape"), py::arg("tile"), py::arg("dtype"),
     "Elements of the transformed filters for inference (their layout depends on the dtype and the ISA).");
  m.def("conv_winograd_prepare_filters", [](const ConvShape& s, int tile, const py::array& w, py::array& u) {
    if (dtype_of(w, "weight") == DType::f32) return prepare_filters<float>(s, tile, w, u);
    return prepare_filters<double>(s, tile, w, u);
  }, py::arg("shape"), py::arg("tile"), py::arg("weight"), py::arg("prepared"),
     "prepared <- the filters transformed for conv_winograd_forward(prepared=...).");
  m.def("conv_winograd_backward_input", [](const ConvShape& s, int tile, const py::array& gy, const py::array& w,
                                           py::array& gx) {
    if (dtype_of(gy, "grad_output") == DType::f32) return backward_input<float>(s, tile, gy, w, gx);
    return backward_input<double>(s, tile, gy, w, gx);
  }, py::arg("shape"), py::arg("tile"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"));
  m.def("conv_winograd_backward_weight", [](const ConvShape& s, int tile, const py::array& x, const py::array& gy,
                                            const py::object& gw, const py::object& gb) {
    if (dtype_of(x, "input") == DType::f32) return backward_weight<float>(s, tile, x, gy, gw, gb);
    return backward_weight<double>(s, tile, x, gy, gw, gb);
  }, py::arg("shape"), py::arg("tile"), py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"),
     py::arg("grad_bias"));
}

}  // namespace pyconv
