// Bindings of the CUDA kernels (csrc/cuda/kernels.h). Compiled twice by the host compiler: into
// pyconv._C_cuda (device pointers, kernels built by nvcc) and into pyconv._C_cuda_emu (host
// pointers, the same kernels run by the launch emulator). Buffers arrive as (address, numel) pairs
// from pyconv/backends/cuda.py; everything checkable without dereferencing is checked here: element
// counts against the shape, null and misaligned addresses, shape ranges, dtype names.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/shape_checks.h"
#include "cuda/kernels.h"

namespace pyconv {
namespace py = pybind11;
using kern::stream_t;

namespace {

// The float / double dispatch of every entry point (our AT_DISPATCH): calls f(float{}) or
// f(double{}) for the dtype name; f takes the element type as decltype of its argument.
template <typename F>
void dispatch_dtype(const std::string& dt, F&& f) {
  if (dt == "float32") return f(float{});
  if (dt == "float64") return f(double{});
  fail("dtype ", dt, " is not supported; expected float32 or float64");
}

// (address, numel) -> typed pointer; None -> nullptr when the buffer is optional.
template <typename T>
T* buffer(const py::object& o, const char* name, int64_t need, bool optional = false) {
  if (o.is_none()) {
    PYCONV_CHECK(optional, name, ": buffer is required");
    return nullptr;
  }
  const auto pr = o.cast<std::pair<uintptr_t, int64_t>>();
  PYCONV_CHECK(pr.second == need, name, ": buffer has ", pr.second, " elements but the shape needs ", need);
  PYCONV_CHECK(need == 0 || pr.first != 0, name, ": null address");
  PYCONV_CHECK(pr.first % alignof(T) == 0, name, ": address ", pr.first, " is not aligned to ", alignof(T),
               " bytes");
  return reinterpret_cast<T*>(pr.first);
}

stream_t stream_of(uintptr_t s) { return reinterpret_cast<stream_t>(s); }

constexpr int64_t kSizeLimit = int64_t(1) << 40;

ConvShape conv_shape(const std::array<int64_t, 16>& a) {
  ConvShape s;
  s.N = a[0], s.C = a[1], s.H = a[2], s.W = a[3], s.K = a[4], s.R = a[5], s.S = a[6], s.P = a[7], s.Q = a[8];
  s.G = a[9], s.stride_h = a[10], s.stride_w = a[11], s.pad_h = a[12], s.pad_w = a[13], s.dil_h = a[14],
  s.dil_w = a[15];
  for (int64_t v : a) PYCONV_CHECK(v >= 0 && v < kSizeLimit, "ConvShape: size ", v, " out of range");
  check_conv_shape(s);
  return s;
}

kern::PoolDims pool_dims(const std::array<int64_t, 14>& a) {
  kern::PoolDims s{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13]};
  for (int64_t v : a) PYCONV_CHECK(v >= 0 && v < kSizeLimit, "PoolShape: size ", v, " out of range");
  PYCONV_CHECK(s.kernel_h >= 1 && s.kernel_w >= 1 && s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 &&
                   s.dil_w >= 1,
               "PoolShape: kernel size, stride and dilation must be positive");
  return s;
}

kern::BatchNormDims bn_dims(const std::array<int64_t, 3>& a) {
  for (int64_t v : a) PYCONV_CHECK(v >= 0 && v < kSizeLimit, "BatchNormShape: size ", v, " out of range");
  return {a[0], a[1], a[2]};
}

enum class Algo { direct, igemm };

Algo parse_algo(const std::string& a) {
  if (a == "direct") return Algo::direct;
  if (a == "im2col") return Algo::igemm;
  fail("algo=", a, " is not implemented by the cuda backend (it has 'direct' and 'im2col')");
}

template <typename T>
void conv_fwd(Algo algo, const ConvShape& s, const py::object& x, const py::object& w, const py::object& b,
              const py::object& y, uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const T* wp = buffer<const T>(w, "weight", checked_numel({s.K, s.C / s.G, s.R, s.S}));
  const T* bp = buffer<const T>(b, "bias", s.K, true);
  T* yp = buffer<T>(y, "output", checked_numel({s.N, s.K, s.P, s.Q}));
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) kern::conv_direct_fprop<T>(s, xp, wp, bp, yp, stream_of(stream));
  else kern::conv_igemm_fprop<T>(s, xp, wp, bp, yp, stream_of(stream));
}

template <typename T>
void conv_bwd_input(Algo algo, const ConvShape& s, const py::object& gy, const py::object& w, const py::object& gx,
                    uintptr_t stream) {
  const T* gyp = buffer<const T>(gy, "grad_output", checked_numel({s.N, s.K, s.P, s.Q}));
  const T* wp = buffer<const T>(w, "weight", checked_numel({s.K, s.C / s.G, s.R, s.S}));
  T* gxp = buffer<T>(gx, "grad_input", checked_numel({s.N, s.C, s.H, s.W}));
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) kern::conv_direct_dgrad<T>(s, gyp, wp, gxp, stream_of(stream));
  else kern::conv_igemm_dgrad<T>(s, gyp, wp, gxp, stream_of(stream));
}

template <typename T>
void conv_bwd_weight(Algo algo, const ConvShape& s, const py::object& x, const py::object& gy, const py::object& gw,
                     const py::object& gb, const py::object& ws, uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const T* gyp = buffer<const T>(gy, "grad_output", checked_numel({s.N, s.K, s.P, s.Q}));
  T* gwp = buffer<T>(gw, "grad_weight", checked_numel({s.K, s.C / s.G, s.R, s.S}), true);
  T* gbp = buffer<T>(gb, "grad_bias", s.K, true);
  const int64_t ws_need = algo == Algo::igemm && gwp ? kern::conv_igemm_wgrad_workspace(s) : 0;
  T* wsp = ws_need ? buffer<T>(ws, "workspace", ws_need) : nullptr;
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) kern::conv_direct_wgrad<T>(s, xp, gyp, gwp, gbp, stream_of(stream));
  else kern::conv_igemm_wgrad<T>(s, xp, gyp, gwp, gbp, wsp, stream_of(stream));
}

template <typename T>
void max_fwd(const kern::PoolDims& s, const py::object& x, const py::object& y, const py::object& idx,
             uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const int64_t out = checked_numel({s.N, s.C, s.P, s.Q});
  T* yp = buffer<T>(y, "output", out);
  int64_t* ip = buffer<int64_t>(idx, "indices", out);
  py::gil_scoped_release nogil;
  kern::max_pool_fprop<T>(s, xp, yp, ip, stream_of(stream));
}

template <typename T>
void max_bwd(const kern::PoolDims& s, const py::object& gy, const py::object& idx, const py::object& gx,
             uintptr_t stream) {
  const int64_t out = checked_numel({s.N, s.C, s.P, s.Q});
  const T* gyp = buffer<const T>(gy, "grad_output", out);
  const int64_t* ip = buffer<const int64_t>(idx, "indices", out);
  T* gxp = buffer<T>(gx, "grad_input", checked_numel({s.N, s.C, s.H, s.W}));
  py::gil_scoped_release nogil;
  kern::max_pool_bprop<T>(s, gyp, ip, gxp, stream_of(stream));
}

template <typename T>
void avg_fwd(const kern::PoolDims& s, const py::object& x, const py::object& y, bool cip, int64_t div,
             uintptr_t stream) {
  PYCONV_CHECK(div >= 0, "divisor_override=", div, ": expected a positive divisor (0 = none)");
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  T* yp = buffer<T>(y, "output", checked_numel({s.N, s.C, s.P, s.Q}));
  py::gil_scoped_release nogil;
  kern::avg_pool_fprop<T>(s, xp, yp, cip, div, stream_of(stream));
}

template <typename T>
void avg_bwd(const kern::PoolDims& s, const py::object& gy, const py::object& gx, bool cip, int64_t div,
             uintptr_t stream) {
  PYCONV_CHECK(div >= 0, "divisor_override=", div, ": expected a positive divisor (0 = none)");
  const T* gyp = buffer<const T>(gy, "grad_output", checked_numel({s.N, s.C, s.P, s.Q}));
  T* gxp = buffer<T>(gx, "grad_input", checked_numel({s.N, s.C, s.H, s.W}));
  py::gil_scoped_release nogil;
  kern::avg_pool_bprop<T>(s, gyp, gxp, cip, div, stream_of(stream));
}

template <typename T>
void bn_fwd(const kern::BatchNormDims& s, const py::object& x, const py::object& w, const py::object& b,
            const py::object& rm, const py::object& rv, const py::object& y, const py::object& sm,
            const py::object& si, bool training, double momentum, double eps, bool relu, const py::object& stats,
            uintptr_t stream) {
  const int64_t n = checked_numel({s.N, s.C, s.L});
  const T* xp = buffer<const T>(x, "input", n);
  const T* wp = buffer<const T>(w, "weight", s.C, true);
  const T* bp = buffer<const T>(b, "bias", s.C, true);
  T* rmp = buffer<T>(rm, "running_mean", s.C, true);
  T* rvp = buffer<T>(rv, "running_var", s.C, true);
  PYCONV_CHECK(training || (rmp && rvp), "running_mean/running_var: required when training=False");
  T* yp = buffer<T>(y, "output", n);
  T* smp = buffer<T>(sm, "save_mean", s.C);
  T* sip = buffer<T>(si, "save_invstd", s.C);
  const double* stp = buffer<const double>(stats, "stats", 2 * s.C, true);
  PYCONV_CHECK(!stp || training, "stats: only used in training mode (eval normalizes with the running stats)");
  py::gil_scoped_release nogil;
  kern::batch_norm_fprop<T>(s, xp, wp, bp, rmp, rvp, yp, smp, sip, training, momentum, eps, relu, stp,
                            stream_of(stream));
}

template <typename T>
void bn_bwd(const kern::BatchNormDims& s, const py::object& gy, const py::object& x, const py::object& w,
            const py::object& sm, const py::object& si, const py::object& gx, const py::object& gw,
            const py::object& gb, const py::object& ws, const py::object& z, bool training, uintptr_t stream) {
  const int64_t n = checked_numel({s.N, s.C, s.L});
  const T* gyp = buffer<const T>(gy, "grad_output", n);
  const T* xp = buffer<const T>(x, "input", n);
  const T* wp = buffer<const T>(w, "weight", s.C, true);
  const T* smp = buffer<const T>(sm, "save_mean", s.C);
  const T* sip = buffer<const T>(si, "save_invstd", s.C);
  T* gxp = buffer<T>(gx, "grad_input", n, true);
  T* gwp = buffer<T>(gw, "grad_weight", s.C, true);
  T* gbp = buffer<T>(gb, "grad_bias", s.C, true);
  T* wsp = buffer<T>(ws, "workspace", 2 * s.C);
  const T* zp = buffer<const T>(z, "relu_output", n, true);
  py::gil_scoped_release nogil;
  kern::batch_norm_bprop<T>(s, gyp, xp, wp, smp, sip, zp, gxp, gwp, gbp, wsp, training, stream_of(stream));
}

// ---- conv-BN-ReLU fusion: ReLU kernels and the conv forward with per-channel output statistics ----

template <typename T>
void activation_fwd(int64_t n, const py::object& x, const py::object& residual, int act, uintptr_t stream) {
  PYCONV_CHECK(n >= 0, "activation: negative size ", n);
  PYCONV_CHECK(act >= kern::kActNone && act <= kern::kActRelu6, "activation: index ", act,
               " is not 0 (none), 1 (relu) or 2 (relu6)");
  T* xp = buffer<T>(x, "input", n);
  const T* rp = buffer<const T>(residual, "residual", n, true);
  py::gil_scoped_release nogil;
  kern::activation_fprop<T>(n, xp, rp, act, stream_of(stream));
}

template <typename T>
void relu_bwd(int64_t n, const py::object& gz, const py::object& z, const py::object& gx, uintptr_t stream) {
  PYCONV_CHECK(n >= 0, "relu: negative size ", n);
  const T* gzp = buffer<const T>(gz, "grad_output", n);
  const T* zp = buffer<const T>(z, "output", n);
  T* gxp = buffer<T>(gx, "grad_input", n);
  py::gil_scoped_release nogil;
  kern::relu_bprop<T>(n, gzp, zp, gxp, stream_of(stream));
}

// Elements of the float64 workspace conv2d_forward_stats needs; the algos with a stats epilogue only.
int64_t conv_stats_workspace(Algo algo, const ConvShape& s) {
  PYCONV_CHECK(algo == Algo::direct || algo == Algo::igemm,
               "stats: the conv forward statistics epilogue exists for algo='direct' and 'im2col' only");
  return kern::conv_fprop_stats_workspace(s, algo == Algo::igemm);
}

template <typename T>
void conv_fwd_stats(Algo algo, const ConvShape& s, const py::object& x, const py::object& w, const py::object& b,
                    const py::object& y, const py::object& stats, const py::object& ws, uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const T* wp = buffer<const T>(w, "weight", checked_numel({s.K, s.C / s.G, s.R, s.S}));
  const T* bp = buffer<const T>(b, "bias", s.K, true);
  T* yp = buffer<T>(y, "output", checked_numel({s.N, s.K, s.P, s.Q}));
  double* stp = buffer<double>(stats, "stats", 2 * s.K);
  double* wsp = buffer<double>(ws, "workspace", conv_stats_workspace(algo, s));
  py::gil_scoped_release nogil;
  if (algo == Algo::direct) kern::conv_direct_fprop_stats<T>(s, xp, wp, bp, yp, stp, wsp, stream_of(stream));
  else kern::conv_igemm_fprop_stats<T>(s, xp, wp, bp, yp, stp, wsp, stream_of(stream));
}

template <typename T>
void conv_out_stats(const ConvShape& s, const py::object& y, const py::object& stats, const py::object& ws,
                    uintptr_t stream) {
  T* yp = buffer<T>(y, "output", checked_numel({s.N, s.K, s.P, s.Q}));
  double* stp = buffer<double>(stats, "stats", 2 * s.K);
  double* wsp = buffer<double>(ws, "workspace", kern::conv_fprop_stats_workspace(s, false));
  py::gil_scoped_release nogil;
  kern::conv_output_stats<T>(s, yp, stp, wsp, stream_of(stream));
}

void bind_fusion_ops(py::module_& m) {
  using A16 = std::array<int64_t, 16>;
  using O = const py::object&;
  m.def("activation_forward", [](const std::string& dt, int64_t n, O x, O residual, int act, uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { activation_fwd<decltype(t)>(n, x, residual, act, stream); });
  });
  m.def("relu_backward", [](const std::string& dt, int64_t n, O gz, O z, O gx, uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { relu_bwd<decltype(t)>(n, gz, z, gx, stream); });
  });
  m.def("conv2d_forward_stats_workspace", [](const std::string& algo, const A16& shape) -> int64_t {
    return conv_stats_workspace(parse_algo(algo), conv_shape(shape));
  }, "Elements of the float64 workspace conv2d_forward_stats needs.");
  m.def("conv2d_forward_stats", [](const std::string& algo, const std::string& dt, const A16& shape, O x, O w, O b,
                                   O y, O stats, O ws, uintptr_t stream) {
    const Algo a = parse_algo(algo);
    const ConvShape s = conv_shape(shape);
    dispatch_dtype(dt, [&](auto t) { conv_fwd_stats<decltype(t)>(a, s, x, w, b, y, stats, ws, stream); });
  }, "conv2d_forward that also writes stats[0][k] = sum y, stats[1][k] = sum y^2 (float64).");
  m.def("conv2d_output_stats_workspace", [](const A16& shape) -> int64_t {
    return kern::conv_fprop_stats_workspace(conv_shape(shape), false);
  }, "Elements of the float64 workspace conv2d_output_stats needs.");
  m.def("conv2d_output_stats", [](const std::string& dt, const A16& shape, O y, O stats, O ws, uintptr_t stream) {
    const ConvShape s = conv_shape(shape);
    dispatch_dtype(dt, [&](auto t) { conv_out_stats<decltype(t)>(s, y, stats, ws, stream); });
  }, "stats[0][k] = sum y, stats[1][k] = sum y^2 (float64) of a conv output y already written.");
}

// ---- Winograd F(m x m, 3 x 3): the caller picks m (pyconv.problem.winograd_tile, the one place
// the tile rule lives); the shape must be 3x3, stride 1, dilation 1.
ConvShape winograd_shape(int m, const std::array<int64_t, 16>& a) {
  PYCONV_CHECK(m == 2 || m == 4, "Winograd output tile m must be 2 or 4, got ", m);
  const ConvShape s = conv_shape(a);
  PYCONV_CHECK(s.R == 3 && s.S == 3, "Winograd F(", m, "x", m, ",3x3) cannot run this convolution: it needs a 3x3 kernel, got ",
               s.R, "x", s.S);
  PYCONV_CHECK(s.stride_h == 1 && s.stride_w == 1, "Winograd F(", m, "x", m,
               ",3x3) cannot run this convolution: it needs stride 1, got stride (", s.stride_h, ", ", s.stride_w, ")");
  PYCONV_CHECK(s.dil_h == 1 && s.dil_w == 1, "Winograd F(", m, "x", m,
               ",3x3) cannot run this convolution: it needs dilation 1, got dilation (", s.dil_h, ", ", s.dil_w, ")");
  return s;
}

kern::WinogradPass winograd_pass(const std::string& p) {
  if (p == "forward") return kern::WinogradPass::fprop;
  if (p == "backward_input") return kern::WinogradPass::dgrad;
  if (p == "backward_weight") return kern::WinogradPass::wgrad;
  fail("winograd workspace: pass ", p, " is not forward, backward_input or backward_weight");
}

template <typename T>
T* winograd_ws(const py::object& ws, const ConvShape& s, int m, kern::WinogradPass pass) {
  const int64_t need = kern::conv_winograd_workspace(s, m, pass);
  return need ? buffer<T>(ws, "workspace", need) : nullptr;
}

template <typename T>
void winograd_fwd(int m, const ConvShape& s, const py::object& x, const py::object& w,
                  const py::object& b, const py::object& y, const py::object& ws, uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const T* wp = buffer<const T>(w, "weight", checked_numel({s.K, s.C / s.G, s.R, s.S}));
  const T* bp = buffer<const T>(b, "bias", s.K, true);
  T* yp = buffer<T>(y, "output", checked_numel({s.N, s.K, s.P, s.Q}));
  T* wsp = winograd_ws<T>(ws, s, m, kern::WinogradPass::fprop);
  py::gil_scoped_release nogil;
  kern::conv_winograd_fprop<T>(s, m, xp, wp, bp, yp, wsp, stream_of(stream));
}

template <typename T>
void winograd_bwd_input(int m, const ConvShape& s, const py::object& gy, const py::object& w,
                        const py::object& gx, const py::object& ws, uintptr_t stream) {
  const T* gyp = buffer<const T>(gy, "grad_output", checked_numel({s.N, s.K, s.P, s.Q}));
  const T* wp = buffer<const T>(w, "weight", checked_numel({s.K, s.C / s.G, s.R, s.S}));
  T* gxp = buffer<T>(gx, "grad_input", checked_numel({s.N, s.C, s.H, s.W}));
  T* wsp = winograd_ws<T>(ws, s, m, kern::WinogradPass::dgrad);
  py::gil_scoped_release nogil;
  kern::conv_winograd_dgrad<T>(s, m, gyp, wp, gxp, wsp, stream_of(stream));
}

template <typename T>
void winograd_bwd_weight(int m, const ConvShape& s, const py::object& x, const py::object& gy,
                         const py::object& gw, const py::object& gb, const py::object& ws, uintptr_t stream) {
  const T* xp = buffer<const T>(x, "input", checked_numel({s.N, s.C, s.H, s.W}));
  const T* gyp = buffer<const T>(gy, "grad_output", checked_numel({s.N, s.K, s.P, s.Q}));
  T* gwp = buffer<T>(gw, "grad_weight", checked_numel({s.K, s.C / s.G, s.R, s.S}), true);
  T* gbp = buffer<T>(gb, "grad_bias", s.K, true);
  T* wsp = gwp ? winograd_ws<T>(ws, s, m, kern::WinogradPass::wgrad) : nullptr;
  py::gil_scoped_release nogil;
  kern::conv_winograd_wgrad<T>(s, m, xp, gyp, gwp, gbp, wsp, stream_of(stream));
}

}  // namespace

// The same functions in pyconv._C_cuda and pyconv._C_cuda_emu.
void bind_cuda_ops(py::module_& m) {
  using A16 = std::array<int64_t, 16>;
  using A14 = std::array<int64_t, 14>;
  using A3 = std::array<int64_t, 3>;
  using O = const py::object&;
  m.def("conv2d_forward", [](const std::string& algo, const std::string& dt, const A16& shape, O x, O w, O b, O y,
                             uintptr_t stream) {
    const Algo a = parse_algo(algo);
    const ConvShape s = conv_shape(shape);
    dispatch_dtype(dt, [&](auto t) { conv_fwd<decltype(t)>(a, s, x, w, b, y, stream); });
  });
  m.def("conv2d_backward_input", [](const std::string& algo, const std::string& dt, const A16& shape, O gy, O w,
                                    O gx, uintptr_t stream) {
    const Algo a = parse_algo(algo);
    const ConvShape s = conv_shape(shape);
    dispatch_dtype(dt, [&](auto t) { conv_bwd_input<decltype(t)>(a, s, gy, w, gx, stream); });
  });
  m.def("conv2d_backward_weight", [](const std::string& algo, const std::string& dt, const A16& shape, O x, O gy,
                                     O gw, O gb, O ws, uintptr_t stream) {
    const Algo a = parse_algo(algo);
    const ConvShape s = conv_shape(shape);
    dispatch_dtype(dt, [&](auto t) { conv_bwd_weight<decltype(t)>(a, s, x, gy, gw, gb, ws, stream); });
  });
  m.def("conv2d_backward_weight_workspace", [](const std::string& algo, const A16& shape) -> int64_t {
    return parse_algo(algo) == Algo::igemm ? kern::conv_igemm_wgrad_workspace(conv_shape(shape)) : 0;
  }, "Elements of the split-K workspace conv2d_backward_weight needs (0: none).");
  m.def("conv2d_winograd_workspace", [](int tile, const std::string& pass, const A16& shape) -> int64_t {
    const ConvShape s = winograd_shape(tile, shape);
    return kern::conv_winograd_workspace(s, tile, winograd_pass(pass));
  }, "Elements of the workspace a Winograd pass needs (0: none); raises for shapes Winograd cannot run.");
  m.def("conv2d_winograd_forward", [](int tile, const std::string& dt, const A16& shape, O x, O w,
                                      O b, O y, O ws, uintptr_t stream) {
    const ConvShape s = winograd_shape(tile, shape);
    dispatch_dtype(dt, [&](auto t) { winograd_fwd<decltype(t)>(tile, s, x, w, b, y, ws, stream); });
  });
  m.def("conv2d_winograd_backward_input", [](int tile, const std::string& dt, const A16& shape,
                                             O gy, O w, O gx, O ws, uintptr_t stream) {
    const ConvShape s = winograd_shape(tile, shape);
    dispatch_dtype(dt, [&](auto t) { winograd_bwd_input<decltype(t)>(tile, s, gy, w, gx, ws, stream); });
  });
  m.def("conv2d_winograd_backward_weight", [](int tile, const std::string& dt, const A16& shape,
                                              O x, O gy, O gw, O gb, O ws, uintptr_t stream) {
    const ConvShape s = winograd_shape(tile, shape);
    dispatch_dtype(dt, [&](auto t) { winograd_bwd_weight<decltype(t)>(tile, s, x, gy, gw, gb, ws, stream); });
  });
  m.def("max_pool2d_forward", [](const std::string& dt, const A14& shape, O x, O y, O idx, uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { max_fwd<decltype(t)>(pool_dims(shape), x, y, idx, stream); });
  });
  m.def("max_pool2d_backward", [](const std::string& dt, const A14& shape, O gy, O idx, O gx, uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { max_bwd<decltype(t)>(pool_dims(shape), gy, idx, gx, stream); });
  });
  m.def("avg_pool2d_forward", [](const std::string& dt, const A14& shape, O x, O y, bool cip, int64_t div,
                                 uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { avg_fwd<decltype(t)>(pool_dims(shape), x, y, cip, div, stream); });
  });
  m.def("avg_pool2d_backward", [](const std::string& dt, const A14& shape, O gy, O gx, bool cip, int64_t div,
                                  uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) { avg_bwd<decltype(t)>(pool_dims(shape), gy, gx, cip, div, stream); });
  });
  m.def("batch_norm_forward", [](const std::string& dt, const A3& shape, O x, O w, O b, O rm, O rv, O y, O sm,
                                 O si, bool training, double momentum, double eps, bool relu, O stats,
                                 uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) {
      bn_fwd<decltype(t)>(bn_dims(shape), x, w, b, rm, rv, y, sm, si, training, momentum, eps, relu, stats, stream);
    });
  });
  m.def("batch_norm_backward", [](const std::string& dt, const A3& shape, O gy, O x, O w, O sm, O si, O gx, O gw,
                                  O gb, O ws, O z, bool training, uintptr_t stream) {
    dispatch_dtype(dt, [&](auto t) {
      bn_bwd<decltype(t)>(bn_dims(shape), gy, x, w, sm, si, gx, gw, gb, ws, z, training, stream);
    });
  });
  bind_fusion_ops(m);
}

// pyconv::Error -> pyconv.PyConvError, for both modules.
void register_error_translator() {
  static py::object error_type = py::module_::import("pyconv._errors").attr("PyConvError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(error_type.ptr(), e.what());
    }
  });
}

}  // namespace pyconv
