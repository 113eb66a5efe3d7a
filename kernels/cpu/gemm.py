"""Blocked GEMM (Goto / BLIS structure), float32 / float64:

    C[M x N] (+)= A[M x Kd] . B[Kd x N]

A is packed once into panels of 4 rows, [M/4][Kd][4] (zero rows past M); for each block of NC
columns and KC reduction steps, B[pc:pc+KC, jc:jc+NC] is packed into a contiguous KC x NC block
(stays in L2) by the task that owns those columns, and every 4-row panel of C is updated by
tile_update with its acc tile in L1.
A and B may be any strided 2-D views (transposes are read straight from the packing loops).
"""
import numpy as np
from numba import njit, prange

from ._tile import FM, tile_update

MR = 4     # rows of C per tile (tile_update's rows)
NC = 128   # columns of C per block: acc (4 x NC) stays in L1
KC = 256   # reduction steps per packed B block: KC x NC stays in L2


@njit(parallel=True, cache=True)
def pack_a(A, Ap):
    M, Kd = A.shape
    for ib in prange(Ap.shape[0]):
        for p in range(Kd):
            for i in range(MR):
                m = ib * MR + i
                Ap[ib, p, i] = A[m, p] if m < M else A.dtype.type(0)


@njit(parallel=True, cache=True, fastmath=FM)
def column_blocks(Ap, B, C, accumulate):
    """One task per block of NC columns of C (tasks own disjoint columns: no races, and one parallel
    region per GEMM): for each KC step, pack B[pc:pc+KC, jc:jc+NC] contiguously, then update every
    4-row panel of the block with tile_update."""
    M = C.shape[0]
    Kd, N = B.shape
    for jb in prange((N + NC - 1) // NC):
        jc = jb * NC
        nc = min(NC, N - jc)
        Bp = np.empty(KC * nc, dtype=C.dtype)
        taps = np.arange(KC) * nc
        acc = np.empty((MR, nc), dtype=C.dtype)
        for pc in range(0, Kd, KC):
            kc = min(KC, Kd - pc)
            for p in range(kc):
                for j in range(nc):
                    Bp[p * nc + j] = B[pc + p, jc + j]
            for ib in range(Ap.shape[0]):
                rows = min(MR, M - ib * MR)
                acc[:, :] = 0
                if accumulate or pc > 0:
                    for i in range(rows):
                        for j in range(nc):
                            acc[i, j] = C[ib * MR + i, jc + j]
                tile_update(acc, Bp, 0, taps, Ap[ib, pc:pc + kc], kc, nc)
                for i in range(rows):
                    for j in range(nc):
                        C[ib * MR + i, jc + j] = acc[i, j]


@njit(cache=True)
def gemm(A, B, C, accumulate):
    """C = A.B, or C += A.B when accumulate. C must be a 2-D array with unit column stride."""
    M, Kd = A.shape
    N = B.shape[1]
    if M == 0 or N == 0:
        return
    if Kd == 0:
        if not accumulate:
            C[:, :] = 0
        return
    Ap = np.empty(((M + MR - 1) // MR, Kd, MR), dtype=C.dtype)
    pack_a(A, Ap)
    column_blocks(Ap, B, C, accumulate)
