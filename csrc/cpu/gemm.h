// Packed, cache-blocked GEMM (Goto / BLIS structure). Row-major (C order, numpy's layout):
//   C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C,   op(X) = X or X^T
// beta == 0 never reads C (it may hold NaN). The templated engine behind it, with caller-supplied
// packing functors (implicit im2col), is cpu/gemm_driver.h, for kernel sources only.
#pragma once
#include <cstdint>

#include "cpu/isa.h"

PYCONV_FOR_EACH_ISA(
  template <typename T>
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
            const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
)
