// Bindings of the pooling kernels: shape check, buffer checks, GIL released, ISA dispatch.
#include <pybind11/pybind11.h>

#include "bindings/buffers.h"
#include "bindings/huge_pages.h"
#include "cpu/pool.h"

namespace pyconv {
namespace {

int64_t pool_out(int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil, bool ceil_mode) {
  const int64_t num = size + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;  // floor division
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;  // last window starts inside input or left pad
  return out;
}

// Every window must hold at least one in-range tap (torch reads out of bounds otherwise).
bool windows_nonempty(int64_t size, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  if ((out - 1) * stride - pad >= size) return false;
  for (int64_t o = 0; o < out && o * stride - pad < 0; ++o) {
    const int64_t start = o * stride - pad;
    const int64_t r = (-start + dil - 1) / dil;  // first tap at or after column 0
    if (r >= k || start + r * dil >= size) return false;
  }
  return true;
}

void check_pool_shape(const PoolShape& s, bool is_max) {
  PYCONV_CHECK(s.N >= 0 && s.C >= 0, "PoolShape: negative size");
  PYCONV_CHECK(s.H >= 1 && s.W >= 1, "PoolShape: input plane ", s.H, "x", s.W, " must be non-empty");
  PYCONV_CHECK(s.kernel_h >= 1 && s.kernel_w >= 1, "PoolShape: kernel size must be positive");
  PYCONV_CHECK(s.stride_h >= 1 && s.stride_w >= 1, "PoolShape: stride must be positive");
  PYCONV_CHECK(s.dil_h >= 1 && s.dil_w >= 1, "PoolShape: dilation must be positive");
  PYCONV_CHECK(is_max || (s.dil_h == 1 && s.dil_w == 1), "PoolShape: avg_pool2d has no dilation");
  // Range first, so the products below cannot overflow.
  const int64_t lim = int64_t(1) << 40;
  for (int64_t v : {s.N, s.C, s.H, s.W, s.P, s.Q, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.dil_h, s.dil_w,
                    s.pad_h, s.pad_w})
    PYCONV_CHECK(v < lim, "PoolShape: size ", v, " out of range");
  PYCONV_CHECK(s.kernel_h - 1 <= (lim - 1) / s.dil_h && s.kernel_w - 1 <= (lim - 1) / s.dil_w,
               "PoolShape: dilated kernel out of range");
  PYCONV_CHECK(s.pad_h >= 0 && s.pad_w >= 0 && 2 * s.pad_h <= s.kernel_h && 2 * s.pad_w <= s.kernel_w,
               "PoolShape: padding must be in [0, kernel_size / 2]");
  PYCONV_CHECK(s.P == pool_out(s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, false) ||
                   s.P == pool_out(s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, true),
               "PoolShape: output height P=", s.P, " is inconsistent with H=", s.H);
  PYCONV_CHECK(s.Q == pool_out(s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, false) ||
                   s.Q == pool_out(s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, true),
               "PoolShape: output width Q=", s.Q, " is inconsistent with W=", s.W);
  PYCONV_CHECK(s.P >= 1 && s.Q >= 1, "PoolShape: output size ", s.P, "x", s.Q, " is too small");
  PYCONV_CHECK(windows_nonempty(s.H, s.P, s.kernel_h, s.stride_h, s.pad_h, s.dil_h) &&
                   windows_nonempty(s.W, s.Q, s.kernel_w, s.stride_w, s.pad_w, s.dil_w),
               "PoolShape: a pooling window holds no input element (dilation too large for the input)");
}

struct PoolSizes {
  int64_t x, y;
};

PoolSizes pool_sizes(const PoolShape& s, bool is_max) {
  check_pool_shape(s, is_max);
  return {checked_numel({s.N, s.C, s.H, s.W}), checked_numel({s.N, s.C, s.P, s.Q})};
}

template <typename T>
void max_forward(const PoolShape& s, const py::array& x, py::array& y, const py::object& indices) {
  const PoolSizes n = pool_sizes(s, true);
  // float32 kernels keep indices in int32 lanes: every candidate index must fit.
  if (sizeof(T) == 4 && !indices.is_none()) {
    const int64_t reach = s.H * s.W + (s.Q + 16) * s.stride_w + s.kernel_w * s.dil_w;
    PYCONV_CHECK(reach < (int64_t(1) << 31), "max_pool2d: input planes of ", s.H, "x", s.W,
                 " are too large for float32 indices");
  }
  const T* xp = in_buffer<T>(x, "input", n.x);
  T* yp = out_buffer<T>(y, "output", n.y);
  int64_t* ip = nullptr;
  if (!indices.is_none()) {
    py::array ia = indices.cast<py::array>();
    PYCONV_CHECK(ia.dtype().is(py::dtype::of<int64_t>()), "indices: dtype must be int64");
    PYCONV_CHECK(ia.flags() & py::array::c_style, "indices: buffer must be C-contiguous");
    PYCONV_CHECK(ia.writeable(), "indices: buffer is read-only");
    PYCONV_CHECK(static_cast<int64_t>(ia.size()) == n.y, "indices: buffer has ", ia.size(),
                 " elements but the shape needs ", n.y);
    ip = static_cast<int64_t*>(ia.mutable_data());
    advise_huge_pages(ip, n.y * sizeof(int64_t));
  }
  advise_huge_pages(yp, n.y * sizeof(T));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(max_pool2d_forward<T>)(s, xp, yp, ip);
}

template <typename T>
void max_backward(const PoolShape& s, const py::array& gy, const py::array& indices, py::array& gx) {
  const PoolSizes n = pool_sizes(s, true);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  PYCONV_CHECK(indices.dtype().is(py::dtype::of<int64_t>()), "indices: dtype must be int64");
  PYCONV_CHECK(indices.flags() & py::array::c_style, "indices: buffer must be C-contiguous");
  PYCONV_CHECK(static_cast<int64_t>(indices.size()) == n.y, "indices: buffer has ", indices.size(),
               " elements but the shape needs ", n.y);
  const int64_t* ip = static_cast<const int64_t*>(indices.data());
  T* gxp = out_buffer<T>(gx, "grad_input", n.x);
  advise_huge_pages(gxp, n.x * sizeof(T));
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = PYCONV_ISA_FN(max_pool2d_backward<T>)(s, gyp, ip, gxp);
  }
  PYCONV_CHECK(bad == 0, "indices: ", bad, " values outside [0, H*W) = [0, ", s.H * s.W, ")");
}

template <typename T>
void avg_forward(const PoolShape& s, const py::array& x, py::array& y, bool include_pad, int64_t divisor) {
  const PoolSizes n = pool_sizes(s, false);
  const T* xp = in_buffer<T>(x, "input", n.x);
  T* yp = out_buffer<T>(y, "output", n.y);
  advise_huge_pages(yp, n.y * sizeof(T));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(avg_pool2d_forward<T>)(s, xp, yp, include_pad, divisor);
}

template <typename T>
void avg_backward(const PoolShape& s, const py::array& gy, py::array& gx, bool include_pad, int64_t divisor) {
  const PoolSizes n = pool_sizes(s, false);
  const T* gyp = in_buffer<T>(gy, "grad_output", n.y);
  T* gxp = out_buffer<T>(gx, "grad_input", n.x);
  advise_huge_pages(gxp, n.x * sizeof(T));
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(avg_pool2d_backward<T>)(s, gyp, gxp, include_pad, divisor);
}

}  // namespace

void bind_pool(py::module_& m) {
  py::class_<PoolShape>(m, "PoolShape")
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t P, int64_t Q, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
             PoolShape s;
             s.N = N, s.C = C, s.H = H, s.W = W, s.P = P, s.Q = Q, s.kernel_h = kh, s.kernel_w = kw;
             s.stride_h = sh, s.stride_w = sw, s.pad_h = ph, s.pad_w = pw, s.dil_h = dh, s.dil_w = dw;
             return s;
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("P"), py::arg("Q"), py::arg("kernel_h"),
           py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
           py::arg("dil_h"), py::arg("dil_w"));

  m.def("max_pool2d_forward", [](const PoolShape& s, const py::array& x, py::array& y, const py::object& idx) {
    if (dtype_of(x, "input") == DType::f32) return max_forward<float>(s, x, y, idx);
    return max_forward<double>(s, x, y, idx);
  }, py::arg("shape"), py::arg("input"), py::arg("output"), py::arg("indices"));
  m.def("max_pool2d_backward", [](const PoolShape& s, const py::array& gy, const py::array& idx, py::array& gx) {
    if (dtype_of(gy, "grad_output") == DType::f32) return max_backward<float>(s, gy, idx, gx);
    return max_backward<double>(s, gy, idx, gx);
  }, py::arg("shape"), py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"));
  m.def("avg_pool2d_forward", [](const PoolShape& s, const py::array& x, py::array& y, bool include_pad,
                                 int64_t divisor) {
    if (dtype_of(x, "input") == DType::f32) return avg_forward<float>(s, x, y, include_pad, divisor);
    return avg_forward<double>(s, x, y, include_pad, divisor);
  }, py::arg("shape"), py::arg("input"), py::arg("output"), py::arg("count_include_pad"),
     py::arg("divisor_override"));
  m.def("avg_pool2d_backward", [](const PoolShape& s, const py::array& gy, py::array& gx, bool include_pad,
                                  int64_t divisor) {
    if (dtype_of(gy, "grad_output") == DType::f32) return avg_backward<float>(s, gy, gx, include_pad, divisor);
    return avg_backward<double>(s, gy, gx, include_pad, divisor);
  }, py::arg("shape"), py::arg("grad_output"), py::arg("grad_input"), py::arg("count_include_pad"),
     py::arg("divisor_override"));
}

}  // namespace pyconv
