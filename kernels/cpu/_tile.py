"""The one inner kernel shared by the direct convolution and the GEMM: a 4-row tile update

    acc[i, q] += sum_t wt[t, i] * src[base + taps[t] + q]      i < 4, t < T, q < n

i.e. a rank-T update of a 4 x n block whose right factor's rows start at arbitrary offsets (packed
image rows for the direct convolution, packed B rows for the GEMM).

Numba does not enable LLVM's SLP vectorizer, so accumulators cannot live in vector registers across
the reduction; instead the q loop is the vectorized one and acc stays in L1. Two taps are folded
into every load/store of acc (8 FMAs per 2 source loads + 4 acc loads + 4 stores), which moves the
loop from store-bound to FMA-bound on AVX2 machines.
"""
from numba import njit

# contract = FMA; no nnan/ninf flags, so NaN and Inf propagate exactly as without fastmath.
FM = {"contract"}
# Reductions additionally allow reassociation (vectorized sums); still no NaN/Inf assumptions.
FM_REDUCE = {"contract", "reassoc"}


@njit(cache=True, fastmath=FM)
def tile_update(acc, src, base, taps, wt, T, n):
    t = 0
    while t + 1 < T:
        o0 = base + taps[t]
        o1 = base + taps[t + 1]
        a0, a1, a2, a3 = wt[t, 0], wt[t, 1], wt[t, 2], wt[t, 3]
        b0, b1, b2, b3 = wt[t + 1, 0], wt[t + 1, 1], wt[t + 1, 2], wt[t + 1, 3]
        r0, r1, r2, r3 = acc[0], acc[1], acc[2], acc[3]
        for q in range(n):
            x0 = src[o0 + q]
            x1 = src[o1 + q]
            r0[q] += a0 * x0 + b0 * x1
            r1[q] += a1 * x0 + b1 * x1
            r2[q] += a2 * x0 + b2 * x1
            r3[q] += a3 * x0 + b3 * x1
        t += 2
    if t < T:
        o0 = base + taps[t]
        a0, a1, a2, a3 = wt[t, 0], wt[t, 1], wt[t, 2], wt[t, 3]
        r0, r1, r2, r3 = acc[0], acc[1], acc[2], acc[3]
        for q in range(n):
            x0 = src[o0 + q]
            r0[q] += a0 * x0
            r1[q] += a1 * x0
            r2[q] += a2 * x0
            r3[q] += a3 * x0
