"""Blocked GEMM, float32 / float64, as 3 x 3 blocks of dot products along the reduction axis:

    C[M x N] (+)= A[M x Kd] . B[Kd x N],     C[i, j] (+)= sum_p At[i, p] * Bt[j, p],  At = A, Bt = B^T

Both factors are read as rows contiguous along p: At is A and Bt is B^T, each used in place when its
rows already have unit stride (a C-contiguous A; B the transpose of a C-contiguous array, e.g. the
im2row matrix) and copied once otherwise. Tasks (prange, or serially for callers already inside a
parallel loop) are blocks of MC rows x NC columns of C, so a GEMM with few columns (the late ResNet
layers: 49 pixels) still splits across threads. Inside a task, the reduction runs in steps of
KC_BYTES per row: the 3 rows of At of the current micro-tile stay in L1 while the NC rows of Bt of
the step are swept from L2, 3 at a time, by dot3x3; the first step stores (or adds, when
accumulating) and the later ones add. Rows and columns past M, N are clamped repeats whose sums are
dropped.
"""
import numpy as np
from numba import njit, prange

from ._tile import MR, NR, dot3x3

MC = 48          # rows of C per task
NC = 64          # columns of C per task: NC x KC of Bt (256 KiB) stays in L2
KC_BYTES = 4096  # one row of a KC step (1024 float32, 512 float64): 3 rows of At stay in L1, and the
                 # nine horizontal sums at the end of each dot3x3 are amortized over long vector loops


@njit(cache=True)
def store_block(C, i, j, M, N, s, add):
    """C[i + a, j + b] (+)= s[3a + b] for the rows below M and the columns below N."""
    for a in range(min(MR, M - i)):
        for b in range(min(NR, N - j)):
            if add:
                C[i + a, j + b] += s[a * NR + b]
            else:
                C[i + a, j + b] = s[a * NR + b]


@njit(cache=True)
def gemm_block(At, Bt, C, i0, i1, j0, j1, p0, p1, add):
    """C[i0:i1, j0:j1] (+)= At[i0:i1, p0:p1] . Bt[j0:j1, p0:p1]^T, one 3 x 3 micro-tile at a time (a row
    strip of At stays in L1 while the block's rows of Bt are swept)."""
    for i in range(i0, i1, MR):
        ia1 = min(i + 1, i1 - 1)
        ia2 = min(i + 2, i1 - 1)
        for j in range(j0, j1, NR):
            s = dot3x3(At, i, ia1, ia2, Bt, j, min(j + 1, j1 - 1), min(j + 2, j1 - 1), p0, p1)
            store_block(C, i, j, i1, j1, s, add)


@njit(cache=True)
def gemm_task(At, Bt, C, task, accumulate):
    """Task number `task` of C (+)= At . Bt^T: a block of MC rows x NC columns of C, in KC steps."""
    M, Kd = At.shape
    N = Bt.shape[0]
    mt = (M + MC - 1) // MC
    # row block fastest: a thread's consecutive tasks share the Bt block in L2
    i0 = (task % mt) * MC
    j0 = (task // mt) * NC
    kc = KC_BYTES // At.itemsize
    for p0 in range(0, Kd, kc):
        gemm_block(At, Bt, C, i0, min(M, i0 + MC), j0, min(N, j0 + NC), p0, min(Kd, p0 + kc), accumulate or p0 > 0)


@njit(cache=True)
def num_tasks(M, N):
    return ((M + MC - 1) // MC) * ((N + NC - 1) // NC)


@njit(parallel=True, cache=True)
def gemm_nt(At, Bt, C, accumulate):
    """C (+)= At . Bt^T; At (M x Kd), Bt (N x Kd) with unit stride along Kd, C (M x N). Tasks across threads."""
    for task in prange(num_tasks(At.shape[0], Bt.shape[0])):
        gemm_task(At, Bt, C, task, accumulate)


@njit(cache=True)
def gemm_serial(At, Bt, C, accumulate):
    """gemm_nt on the calling thread (inside another parallel loop)."""
    for task in range(num_tasks(At.shape[0], Bt.shape[0])):
        gemm_task(At, Bt, C, task, accumulate)


@njit(cache=True)
def transpose_into(X, Y):
    """Y = X^T (Y: X.shape[::-1]), in 32 x 32 blocks so that both sides stay in cache lines."""
    m, n = X.shape
    for i0 in range(0, m, 32):
        for j0 in range(0, n, 32):
            for i in range(i0, min(m, i0 + 32)):
                xr = X[i]
                for j in range(j0, min(n, j0 + 32)):
                    Y[j, i] = xr[j]


def rows_along_p(X):
    """X itself when its rows have unit stride (C-contiguous), else a C-contiguous copy."""
    return X if X.flags.c_contiguous else np.ascontiguousarray(X)


def gemm(A, B, C, accumulate):
    """C = A.B, or C += A.B when accumulate. A, B: any strided 2-D views; C: 2-D with unit column
    stride (e.g. a row block of a contiguous array)."""
    M, Kd = A.shape
    N = B.shape[1]
    if M == 0 or N == 0:
        return
    if Kd == 0:
        if not accumulate:
            C[:, :] = 0
        return
    gemm_nt(rows_along_p(A), rows_along_p(B.T), C, accumulate)
