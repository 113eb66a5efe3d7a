// Bindings of the convolution kernels: shape check, buffer checks, GIL released, ISA dispatch.
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "bindings/buffers.h"
#include "bindings/epilogue.h"
#include "cpu/conv_blocked.h"
#include "cpu/conv_direct.h"
#include "cpu/conv_im2col.h"

namespace pyconv {

namespace {

struct ConvBuffers {
  int64_t x, w, y;
};

ConvBuffers conv_sizes(const ConvShape& s) {
  check_conv_shape(s);
  return {checked_numel({s.N, s.C, s.H, s.W}), checked_numel({s.K, s.Cg(), s.R, s.S}),
          checked_numel({s.N, s.K, s.P, s.Q})};
}

enum class Algo { direct, im2col };

// Elements of an algorithm's weights prepared for inference (direct: 0 where its kernel takes none).
template <typename T>
int64_t prepared_numel(Algo algo, const ConvShape& s) {
  return algo == Algo::direct ? PYCONV_ISA_FN(conv_direct_prepared_numel<T>)(s)
                              : PYCONV_ISA_FN(conv_im2col_prepared_numel<T>)(s);
}

template <typename T>
void run_forward(Algo algo, const ConvShape& s, const py::array& x, const py::array& w, const py::object& b,
                 py::array& y, const py::object& stats, const py::object& prepared, const py::object& residual,
                 int act) {
  const ConvBuffers n = conv_sizes(s);
  const T* xp = in_buffer<T>(x, "input", n.x);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  const T* bp = opt_in_buffer<T>(b, "bias", s.K);
  T* yp = out_buffer<T>(y, "output", n.y);
  double* sp = opt_out_buffer<double>(stats, "stats", 2 * s.K);
  const T* pp = nullptr;
  if (algo == Algo::direct) {
    const int64_t np = prepared_numel<T>(algo, s);
    PYCONV_CHECK(np > 0 || prepared.is_none(), "prepared: the direct kernel for this shape takes none");
    pp = opt_in_buffer<T>(prepared, "prepared", np);
    PYCONV_CHECK(!pp || PYCONV_ISA_FN(conv_direct_prepared_fits<T>)(s, pp),
                 "prepared: blocked for another shape (conv_direct_prepare_weight with this shape)");
  } else {
    pp = opt_in_buffer<T>(prepared, "prepared", prepared_numel<T>(algo, s));
    if (pp) {
      PYCONV_CHECK(PYCONV_ISA_FN(conv_im2col_prepared_fits<T>)(s, pp),
                   "prepared: packed for another shape or layout (conv_im2col_prepare_weight with this shape)");
      PYCONV_CHECK(!sp || PYCONV_ISA_FN(conv_im2col_prepared_layout<T>)(s) == 0,
                   "stats: not taken with weights prepared in the pixel-rows layout");
    }
  }
  const ConvEpilogue<T> ep = conv_epilogue<T>(residual, act, n.y, yp, sp != nullptr);
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) return PYCONV_ISA_FN(conv_direct_forward<T>)(s, xp, wp, bp, yp, sp, pp, ep);
  PYCONV_ISA_FN(conv_im2col_forward<T>)(s, xp, wp, bp, yp, sp, pp, ep);
}

template <typename T>
void prepare_weight(Algo algo, const ConvShape& s, const py::array& w, py::array& prepared) {
  const ConvBuffers n = conv_sizes(s);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  const int64_t np = prepared_numel<T>(algo, s);
  PYCONV_CHECK(np > 0, "prepared: this algorithm's kernel for this shape takes none");
  T* pp = out_buffer<T>(prepared, "prepared", np);
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) return PYCONV_ISA_FN(conv_direct_prepare_weight<T>)(s, wp, pp);
  PYCONV_ISA_FN(conv_im2col_prepare_weight<T>)(s, wp, pp);
}

template <typename T>
void run_backward_input(Algo algo, const ConvShape& s, const py::array& gy, const py::array& w, py::array& gx) {
  const ConvBuffers n = conv_sizes(s);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  const T* wp = in_buffer<T>(w, "weight", n.w);
  T* gxp = out_buffer<T>(gx, "grad_input", n.x);
  py::gil_scoped_release nogil;
  auto fn = algo == Algo::direct ? PYCONV_ISA_FN(conv_direct_backward_input<T>)
                                 : PYCONV_ISA_FN(conv_im2col_backward_input<T>);
  fn(s, gyp, wp, gxp);
}

template <typename T>
void run_backward_weight(Algo algo, const ConvShape& s, const py::array& x, const py::array& gy,
                         const py::object& gw, const py::object& gb) {
  const ConvBuffers n = conv_sizes(s);
  const T* xp = in_buffer<T>(x, "input", n.x);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  T* gwp = opt_out_buffer<T>(gw, "grad_weight", n.w);
  T* gbp = opt_out_buffer<T>(gb, "grad_bias", s.K);
  py::gil_scoped_release nogil;
  auto fn = algo == Algo::direct ? PYCONV_ISA_FN(conv_direct_backward_weight<T>)
                                 : PYCONV_ISA_FN(conv_im2col_backward_weight<T>);
  fn(s, xp, gyp, gwp, gbp);
}

}  // namespace

void bind_conv(py::module_& m) {
  py::class_<ConvShape>(m, "ConvShape")
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t P,
                       int64_t Q, int64_t G, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                       int64_t dw) {
             ConvShape s;
             s.N = N, s.C = C, s.H = H, s.W = W, s.K = K, s.R = R, s.S = S, s.P = P, s.Q = Q, s.G = G;
             s.stride_h = sh, s.stride_w = sw, s.pad_h = ph, s.pad_w = pw, s.dil_h = dh, s.dil_w = dw;
             check_conv_shape(s);
             return s;
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("R"), py::arg("S"),
           py::arg("P"), py::arg("Q"), py::arg("G"), py::arg("stride_h"), py::arg("stride_w"),
           py::arg("pad_h"), py::arg("pad_w"), py::arg("dil_h"), py::arg("dil_w"))
      .def_readonly("N", &ConvShape::N).def_readonly("C", &ConvShape::C)
      .def_readonly("K", &ConvShape::K).def_readonly("P", &ConvShape::P).def_readonly("Q", &ConvShape::Q);

  // One set of bindings per algorithm: conv_<algo>_forward / _backward_input / _backward_weight.
  for (const auto& entry : {std::make_pair(std::string("direct"), Algo::direct),
                            std::make_pair(std::string("im2col"), Algo::im2col)}) {
    const std::string name = "conv_" + entry.first;
    const Algo algo = entry.second;
    m.def((name + "_forward").c_str(), [algo](const ConvShape& s, const py::array& x, const py::array& w,
                                              const py::object& b, py::array& y, const py::object& stats,
                                              const py::object& prepared, const py::object& residual, int act) {
      if (dtype_of(x, "input") == DType::f32)
        return run_forward<float>(algo, s, x, w, b, y, stats, prepared, residual, act);
      return run_forward<double>(algo, s, x, w, b, y, stats, prepared, residual, act);
    }, py::arg("shape"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
       py::arg("stats") = py::none(), py::arg("prepared") = py::none(), py::arg("residual") = py::none(),
       py::arg("activation") = 0,
       "output <- activation(conv(input, weight) + bias [+ residual]); activation 0 none, 1 relu, 2 relu6, "
       "applied as the kernel stores its output.");
    m.def((name + "_backward_input").c_str(), [algo](const ConvShape& s, const py::array& gy,
                                                     const py::array& w, py::array& gx) {
      if (dtype_of(gy, "grad_output") == DType::f32) return run_backward_input<float>(algo, s, gy, w, gx);
      return run_backward_input<double>(algo, s, gy, w, gx);
    }, py::arg("shape"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"));
    m.def((name + "_backward_weight").c_str(), [algo](const ConvShape& s, const py::array& x,
                                                      const py::array& gy, const py::object& gw,
                                                      const py::object& gb) {
      if (dtype_of(x, "input") == DType::f32) return run_backward_weight<float>(algo, s, x, gy, gw, gb);
      return run_backward_weight<double>(algo, s, x, gy, gw, gb);
    }, py::arg("shape"), py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"),
       py::arg("grad_bias"));
  }
  for (const auto& entry : {std::make_pair(std::string("direct"), Algo::direct),
                            std::make_pair(std::string("im2col"), Algo::im2col)}) {
    const std::string name = "conv_" + entry.first;
    const Algo algo = entry.second;
    m.def((name + "_prepared_numel").c_str(), [algo](const ConvShape& s, const std::string& dtype) {
      conv_sizes(s);
      PYCONV_CHECK(dtype == "float32" || dtype == "float64", "dtype=", dtype, ": expected float32 or float64");
      return dtype == "float32" ? prepared_numel<float>(algo, s) : prepared_numel<double>(algo, s);
    }, py::arg("shape"), py::arg("dtype"),
       "Elements of the weights prepared for inference (layout: dtype and ISA); direct: 0 where its kernel "
       "for this shape takes none.");
    m.def((name + "_prepare_weight").c_str(), [algo](const ConvShape& s, const py::array& w, py::array& prepared) {
      if (dtype_of(w, "weight") == DType::f32) return prepare_weight<float>(algo, s, w, prepared);
      return prepare_weight<double>(algo, s, w, prepared);
    }, py::arg("shape"), py::arg("weight"), py::arg("prepared"),
       "prepared <- the weights in the forward kernel's layout (im2col: the GEMM's panels; direct: the "
       "channel-blocked filter panels), for the forward's prepared=.");
  }
  m.def("conv_direct_blocked_min_channels", [](const std::string& dtype) {
    PYCONV_CHECK(dtype == "float32" || dtype == "float64", "dtype=", dtype, ": expected float32 or float64");
    return dtype == "float32" ? PYCONV_ISA_FN(conv_blocked_min_channels<float>)()
                              : PYCONV_ISA_FN(conv_blocked_min_channels<double>)();
  }, py::arg("dtype"),
     "Channels per group, in and out, from which direct's forward is channel-blocked (and takes prepared weights).");
  m.def("conv_im2col_prepared_layout", [](const ConvShape& s, const std::string& dtype) {
    conv_sizes(s);
    PYCONV_CHECK(dtype == "float32" || dtype == "float64", "dtype=", dtype, ": expected float32 or float64");
    return dtype == "float32" ? PYCONV_ISA_FN(conv_im2col_prepared_layout<float>)(s)
                              : PYCONV_ISA_FN(conv_im2col_prepared_layout<double>)(s);
  }, py::arg("shape"), py::arg("dtype"),
     "Layout of the prepared weights for this shape: 0 (W's A panels) or 1 (W^T's B panels, pixels as rows).");
  m.def("conv_im2col_workspace_bytes", [](const ConvShape& s, const std::string& dtype, int pass) {
    check_conv_shape(s);
    PYCONV_CHECK(pass >= 0 && pass <= 2, "pass must be 0 (forward), 1 (grad-input) or 2 (grad-weight)");
    PYCONV_CHECK(dtype == "float32" || dtype == "float64", "dtype must be 'float32' or 'float64'");
    if (dtype == "float32") return PYCONV_ISA_FN(conv_im2col_workspace_bytes<float>)(s, pass);
    return PYCONV_ISA_FN(conv_im2col_workspace_bytes<double>)(s, pass);
  }, py::arg("shape"), py::arg("dtype"), py::arg("pass_"),
     "Scratch bytes of one im2col call (0 forward, 1 grad-input, 2 grad-weight).");
}

}  // namespace pyconv
