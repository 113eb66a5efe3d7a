// General matrix multiply on the packed engine of cpu/gemm_driver.h, row-major:
//   C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C
// op(A)(i, k) = A[i*lda + k] (or A[k*lda + i] transposed); op(B)(k, j) = B[k*ldb + j] (or B[j*ldb + k]).
#include "cpu/gemm.h"

#include "cpu/gemm_driver.h"

namespace pyconv {
namespace PYCONV_ISA {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const StridedPackA<T> pa{A, trans_a ? 1 : lda, trans_a ? lda : 1};
  const StridedPackB<T> pb{B, trans_b ? 1 : ldb, trans_b ? ldb : 1};
  const MatrixOut<T, DenseColumns> out{C, ldc, DenseColumns{}, alpha, beta, nullptr};
  gemm_run<T>(M, N, K, pa, pb, out);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace PYCONV_ISA
}  // namespace pyconv
