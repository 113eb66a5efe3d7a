// Binding of the packed GEMM: _C.gemm(a, b, c, trans_a, trans_b, alpha, beta) computes, in place,
// c = alpha * op(a) . op(b) + beta * c on 2-D C-contiguous numpy arrays of one dtype.
#include <pybind11/pybind11.h>

#include "bindings/buffers.h"
#include "cpu/gemm.h"

namespace pyconv {
namespace {

template <typename T>
void gemm_typed(const py::array& a, const py::array& b, py::array& c, bool ta, bool tb, double alpha,
                double beta) {
  PYCONV_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "gemm: a, b and c must be 2-D");
  const int64_t ar = a.shape(0), ac = a.shape(1), br = b.shape(0), bc = b.shape(1);
  const int64_t M = ta ? ac : ar, K = ta ? ar : ac;
  const int64_t Kb = tb ? bc : br, N = tb ? br : bc;
  PYCONV_CHECK(K == Kb, "gemm: inner dimensions differ: op(a) is ", M, "x", K, ", op(b) is ", Kb, "x", N);
  PYCONV_CHECK(c.shape(0) == M && c.shape(1) == N, "gemm: c is ", c.shape(0), "x", c.shape(1),
               " but op(a).op(b) is ", M, "x", N);
  const T* ap = in_buffer<T>(a, "a", checked_numel({ar, ac}));
  const T* bp = in_buffer<T>(b, "b", checked_numel({br, bc}));
  T* cp = out_buffer<T>(c, "c", checked_numel({M, N}));
  // c is written while a and b are still read: they must not share memory.
  auto overlaps = [&](const T* p, int64_t n) { return n > 0 && M * N > 0 && p < cp + M * N && cp < p + n; };
  PYCONV_CHECK(!overlaps(ap, ar * ac) && !overlaps(bp, br * bc), "gemm: c must not overlap a or b");
  py::gil_scoped_release nogil;
  PYCONV_ISA_FN(gemm<T>)(ta, tb, M, N, K, T(alpha), ap, ac, bp, bc, T(beta), cp, N);
}

}  // namespace

void bind_gemm(py::module_& m) {
  m.def("gemm", [](const py::array& a, const py::array& b, py::array& c, bool trans_a, bool trans_b,
                   double alpha, double beta) {
    if (dtype_of(a, "a") == DType::f32) return gemm_typed<float>(a, b, c, trans_a, trans_b, alpha, beta);
    return gemm_typed<double>(a, b, c, trans_a, trans_b, alpha, beta);
  }, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false, py::arg("trans_b") = false,
     py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
     "c = alpha * op(a) . op(b) + beta * c, in place (op = transpose when trans_*); beta=0 never reads c.");
}

}  // namespace pyconv
