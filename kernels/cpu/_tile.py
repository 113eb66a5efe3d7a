"""The two inner kernels of the numba CPU backend.

dot3x3 (the micro-kernel of the GEMM, kernels/cpu/gemm.py, used by im2col): a 3 x 3 block of nine
dot products over a range of the reduction axis p,

    s[i, j] = sum_{p0 <= p < p1} a[ia_i, p] * b[jb_j, p]      i, j < 3

where a and b hold their operands as rows contiguous along p. LLVM's loop vectorizer turns the p loop
into nine vector reductions: the accumulators stay in vector registers (9 ymm + 6 loaded, no spills)
and every iteration does 6 loads for 9 FMAs, so it is FMA-bound. (An outer-product micro-kernel, as
in csrc/cpu/gemm_driver.h, needs the SLP vectorizer to keep its accumulators in registers, and numba
leaves SLP off.) The 9 sums are reassociated (vector lanes, then a horizontal sum): fastmath
'reassoc' is limited to this reduction, never nnan/ninf, so NaN and Inf propagate. The horizontal
sums make it slow on short reductions (below ~256), hence:

tile_update (the direct convolution's and the Winograd per-point products' kernel, whose reductions
over channels can be as short as 64): a 4-row tile update

    acc[i, q] += sum_t wt[t, i] * src[base + taps[t] + q]      i < 4, t < T, q < n

i.e. a rank-T update of a 4 x n block whose right factor's rows start at arbitrary offsets (packed
image rows, or the rows of the transformed input). The q loop is the vectorized one and acc stays in
L1; two taps are folded into every load/store of acc (8 FMAs per 2 source loads + 4 acc loads + 4
stores).

Both read their operands through slices taken before the loop: an index such as src[o + q] with a
signed offset makes numba emit a negative-index wraparound select per element, which turns every
vector load into a gather of scalars.
"""
from numba import njit

# contract = FMA; no nnan/ninf flags, so NaN and Inf propagate exactly as without fastmath.
FM = {"contract"}
# Reductions additionally allow reassociation (vectorized sums); still no NaN/Inf assumptions.
FM_REDUCE = {"contract", "reassoc"}

MR = 3  # rows of a per dot3x3 block
NR = 3  # rows of b per dot3x3 block


@njit(cache=True, fastmath=FM_REDUCE)
def dot3x3(a, ia0, ia1, ia2, b, jb0, jb1, jb2, p0, p1):
    """The nine sums s[i, j] (row-major tuple). a, b: 2-D arrays with unit stride along p; rows may repeat
    (callers clamp the rows past the end of a matrix and drop those sums)."""
    x0 = a[ia0, p0:p1]
    x1 = a[ia1, p0:p1]
    x2 = a[ia2, p0:p1]
    y0 = b[jb0, p0:p1]
    y1 = b[jb1, p0:p1]
    y2 = b[jb2, p0:p1]
    z = a.dtype.type(0)
    s00, s01, s02, s10, s11, s12, s20, s21, s22 = z, z, z, z, z, z, z, z, z
    for p in range(p1 - p0):
        u0 = x0[p]
        u1 = x1[p]
        u2 = x2[p]
        v0 = y0[p]
        v1 = y1[p]
        v2 = y2[p]
        s00 += u0 * v0
        s01 += u0 * v1
        s02 += u0 * v2
        s10 += u1 * v0
        s11 += u1 * v1
        s12 += u1 * v2
        s20 += u2 * v0
        s21 += u2 * v1
        s22 += u2 * v2
    return s00, s01, s02, s10, s11, s12, s20, s21, s22


@njit(cache=True, fastmath=FM)
def tile_update(acc, src, base, taps, wt, T, n):
    r0, r1, r2, r3 = acc[0, :n], acc[1, :n], acc[2, :n], acc[3, :n]
    t = 0
    while t + 1 < T:
        x0 = src[base + taps[t]:base + taps[t] + n]
        x1 = src[base + taps[t + 1]:base + taps[t + 1] + n]
        a0, a1, a2, a3 = wt[t, 0], wt[t, 1], wt[t, 2], wt[t, 3]
        b0, b1, b2, b3 = wt[t + 1, 0], wt[t + 1, 1], wt[t + 1, 2], wt[t + 1, 3]
        for q in range(n):
            u0 = x0[q]
            u1 = x1[q]
            r0[q] += a0 * u0 + b0 * u1
            r1[q] += a1 * u0 + b1 * u1
            r2[q] += a2 * u0 + b2 * u1
            r3[q] += a3 * u0 + b3 * u1
        t += 2
    if t < T:
        x0 = src[base + taps[t]:base + taps[t] + n]
        a0, a1, a2, a3 = wt[t, 0], wt[t, 1], wt[t, 2], wt[t, 3]
        for q in range(n):
            u0 = x0[q]
            r0[q] += a0 * u0
            r1[q] += a1 * u0
            r2[q] += a2 * u0
            r3[q] += a3 * u0
