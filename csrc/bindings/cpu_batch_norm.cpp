// Bindings of the batch-norm kernels: shape check, buffer checks, GIL released, ISA dispatch.
#include <pybind11/pybind11.h>

#include <cmath>
#include <limits>

#include "bindings/buffers.h"
#include "bindings/huge_pages.h"
#include "cpu/batch_norm.h"

namespace pyconv {
namespace {

int64_t bn_numel(const BatchNormShape& s) {
  PYCONV_CHECK(s.N >= 0 && s.C >= 0 && s.L >= 0, "BatchNormShape: sizes N=", s.N, " C=", s.C, " L=", s.L,
               " must be non-negative");
  return checked_numel({s.N, s.C, s.L});
}

int64_t relu_mask_words(const BatchNormShape& s) {
  bn_numel(s);
  return checked_numel({s.N, s.C, relu_mask_words_per_row(s.L)});
}

template <typename T>
void forward(const BatchNormShape& s, const py::array& x, const py::object& w, const py::object& b,
             const py::object& rm, const py::object& rv, py::array& y, py::array& save_mean, py::array& save_invstd,
             bool training, double momentum, double eps, const py::object& stats, bool relu, double relu_max,
             const py::object& residual, const py::object& relu_mask) {
  const int64_t n = bn_numel(s);
  PYCONV_CHECK(relu_max > 0, "relu_max=", relu_max, ": expected a positive clip (infinity: ReLU)");
  PYCONV_CHECK(eps >= 0, "eps=", eps, ": expected a non-negative value");
  PYCONV_CHECK(std::isfinite(momentum), "momentum=", momentum, ": expected a finite value");
  PYCONV_CHECK(training || (!rm.is_none() && !rv.is_none()), "running_mean/running_var: required in eval mode");
  PYCONV_CHECK(!training || checked_numel({s.N, s.L}) != 1, "input: expected more than 1 value per channel when training");
  const T* xp = in_buffer<T>(x, "input", n);
  const T* wp = opt_in_buffer<T>(w, "weight", s.C);
  const T* bp = opt_in_buffer<T>(b, "bias", s.C);
  T* rmp = opt_out_buffer<T>(rm, "running_mean", s.C);
  T* rvp = opt_out_buffer<T>(rv, "running_var", s.C);
  T* yp = out_buffer<T>(y, "output", n);
  T* smp = out_buffer<T>(save_mean, "save_mean", s.C);
  T* sip = out_buffer<T>(save_invstd, "save_invstd", s.C);
  const double* stp = opt_in_buffer<double>(stats, "stats", 2 * s.C);
  const T* rp = opt_in_buffer<T>(residual, "residual", n);
  PYCONV_CHECK(relu || relu_mask.is_none(), "relu_mask: given without relu");
  uint64_t* mp = opt_out_buffer<uint64_t>(relu_mask, "relu_mask", relu_mask_words(s));
  advise_huge_pages(yp, n * sizeof(T));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(batch_norm_forward<T>)(s, xp, wp, bp, rmp, rvp, yp, smp, sip, training, momentum, eps, stp, relu,
                                       relu_max, rp, mp);
}

template <typename T>
void backward(const BatchNormShape& s, const py::array& gy, const py::array& x, const py::object& w,
              const py::array& save_mean, const py::array& save_invstd, const py::object& gx, const py::object& gw,
              const py::object& gb, bool training, const py::object& relu_out, double relu_max,
              const py::object& g_residual, const py::object& relu_mask) {
  const int64_t n = bn_numel(s);
  PYCONV_CHECK(relu_max > 0, "relu_max=", relu_max, ": expected a positive clip (infinity: ReLU)");
  const T* gyp = in_buffer<T>(gy, "grad_output", n);
  const T* xp = in_buffer<T>(x, "input", n);
  const T* wp = opt_in_buffer<T>(w, "weight", s.C);
  const T* smp = in_buffer<T>(save_mean, "save_mean", s.C);
  const T* sip = in_buffer<T>(save_invstd, "save_invstd", s.C);
  T* gxp = opt_out_buffer<T>(gx, "grad_input", n);
  T* gwp = opt_out_buffer<T>(gw, "grad_weight", s.C);
  T* gbp = opt_out_buffer<T>(gb, "grad_bias", s.C);
  const T* zp = opt_in_buffer<T>(relu_out, "relu_output", n);
  T* grp = opt_out_buffer<T>(g_residual, "grad_residual", n);
  const uint64_t* mp = opt_in_buffer<uint64_t>(relu_mask, "relu_mask", relu_mask_words(s));
  advise_huge_pages(gxp, n * sizeof(T));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(batch_norm_backward<T>)(s, gyp, xp, wp, smp, sip, gxp, gwp, gbp, training, zp, relu_max, grp, mp);
}

}  // namespace

void bind_batch_norm(py::module_& m) {
  py::class_<BatchNormShape>(m, "BatchNormShape")
      .def(py::init([](int64_t N, int64_t C, int64_t L) {
             BatchNormShape s;
             s.N = N, s.C = C, s.L = L;
             return s;
           }),
           py::arg("N"), py::arg("C"), py::arg("L"));
  m.def("batch_norm_forward", [](const BatchNormShape& s, const py::array& x, const py::object& w,
                                 const py::object& b, const py::object& rm, const py::object& rv, py::array& y,
                                 py::array& save_mean, py::array& save_invstd, bool training, double momentum,
                                 double eps, const py::object& stats, bool relu, double relu_max,
                                 const py::object& residual, const py::object& relu_mask) {
    if (dtype_of(x, "input") == DType::f32)
      return forward<float>(s, x, w, b, rm, rv, y, save_mean, save_invstd, training, momentum, eps, stats, relu,
                            relu_max, residual, relu_mask);
    return forward<double>(s, x, w, b, rm, rv, y, save_mean, save_invstd, training, momentum, eps, stats, relu,
                           relu_max, residual, relu_mask);
  }, py::arg("shape"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
     py::arg("running_var"), py::arg("output"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("training"),
     py::arg("momentum"), py::arg("eps"), py::arg("stats") = py::none(), py::arg("relu") = false,
     py::arg("relu_max") = std::numeric_limits<double>::infinity(), py::arg("residual") = py::none(),
     py::arg("relu_mask") = py::none());
  m.def("batch_norm_backward", [](const BatchNormShape& s, const py::array& gy, const py::array& x,
                                  const py::object& w, const py::array& save_mean, const py::array& save_invstd,
                                  const py::object& gx, const py::object& gw, const py::object& gb, bool training,
                                  const py::object& relu_out, double relu_max, const py::object& g_residual,
                                  const py::object& relu_mask) {
    if (dtype_of(x, "input") == DType::f32)
      return backward<float>(s, gy, x, w, save_mean, save_invstd, gx, gw, gb, training, relu_out, relu_max,
                             g_residual, relu_mask);
    return backward<double>(s, gy, x, w, save_mean, save_invstd, gx, gw, gb, training, relu_out, relu_max,
                            g_residual, relu_mask);
  }, py::arg("shape"), py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("save_mean"),
     py::arg("save_invstd"), py::arg("grad_input"), py::arg("grad_weight"), py::arg("grad_bias"),
     py::arg("training"), py::arg("relu_output") = py::none(),
     py::arg("relu_max") = std::numeric_limits<double>::infinity(), py::arg("grad_residual") = py::none(),
     py::arg("relu_mask") = py::none());
  m.def("batch_norm_relu_mask_words", &relu_mask_words, py::arg("shape"),
        "Words (uint64) of the ReLU mask bits batch_norm_forward keeps for batch_norm_backward");
}

}  // namespace pyconv
