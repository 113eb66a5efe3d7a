"""Convolution as an implicit GEMM on the GPU: the im2col matrix is never stored; each TILE x TILE
block stages tiles of it (and of the filter) in shared memory and every thread accumulates one
output element. Per group g, with Cg = C/G, Kg = K/G, the virtual matrix
  X[(c,r,s), (n,p,q)] = x[n, gCg+c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 in the padding)
and
  forward      Y[k, (n,p,q)]          = sum_{(c,r,s)} Wg[k, (c,r,s)] * X[(c,r,s), (n,p,q)]   (+ b[k])
  grad-input   GX[c, (n,h,v)]         = sum_{(k,r,s)} Wg[k, (c,r,s)] * D[(k,r,s), (n,h,v)],
               D[(k,r,s), (n,h,v)]    = gy[n, gKg+k, (h + ph - r*dh)/sh, (v + pw - s*dw)/sw] where both
                                        divisions are exact and in range, else 0 (a gather: no atomics)
  grad-weight  GW[k, (c,r,s)]         = sum_{(n,p,q)} GY[k, (n,p,q)] * X[(c,r,s), (n,p,q)]
               the long (n,p,q) sum is split into chunks, one per grid z-slice; each block writes its
               partial sums, and reduce_chunks adds them in chunk order (deterministic)
One kernel template (make_gemm) serves all three; they differ only in the device functions that
load an element of the left / right matrix and store a result.
"""
import functools
from typing import NamedTuple

import numpy as np
from numba import cuda

from ._common import TILE


@cuda.jit(device=True)
def x_col(x, g, crs, npq, geo):
    """X[(c,r,s), (n,p,q)] of group g: the input element under that tap, or 0 in the padding."""
    N, C, H, W, K, R, S, P, Q, G, sh, sw, ph, pw, dh, dw = geo
    s = crs % S
    t = crs // S
    r = t % R
    c = t // R
    q = npq % Q
    t = npq // Q
    p = t % P
    n = t // P
    h = p * sh - ph + r * dh
    v = q * sw - pw + s * dw
    if h < 0 or h >= H or v < 0 or v >= W:
        return 0
    return x[((n * C + g * (C // G) + c) * H + h) * W + v]


# --- forward: A = filters [Kg, Cg*R*S], B = X, C = y ---

@cuda.jit(device=True)
def fwd_a(w, g, k, crs, geo):
    K, R, S, G = geo[4], geo[5], geo[6], geo[9]
    Cg = geo[1] // G
    return w[(g * (K // G) + k) * Cg * R * S + crs]


@cuda.jit(device=True)
def fwd_b(x, g, crs, npq, geo):
    return x_col(x, g, crs, npq, geo)


@cuda.jit(device=True)
def fwd_store(y, b, has_bias, g, k, npq, chunk, v, geo):
    K, P, Q, G = geo[4], geo[7], geo[8], geo[9]
    kk = g * (K // G) + k
    n = npq // (P * Q)
    if has_bias:
        v += b[kk]
    y[(n * K + kk) * P * Q + npq - n * P * Q] = v


# --- grad-input: A = filters seen as [Cg, Kg*R*S], B = D, C = gx ---

@cuda.jit(device=True)
def bwi_a(w, g, c, krs, geo):
    C, K, R, S, G = geo[1], geo[4], geo[5], geo[6], geo[9]
    RS = R * S
    k = krs // RS
    return w[((g * (K // G) + k) * (C // G) + c) * RS + krs - k * RS]


@cuda.jit(device=True)
def bwi_b(gy, g, krs, nhv, geo):
    N, C, H, W, K, R, S, P, Q, G, sh, sw, ph, pw, dh, dw = geo
    s = krs % S
    t = krs // S
    r = t % R
    k = t // R
    v = nhv % W
    t = nhv // W
    h = t % H
    n = t // H
    th = h + ph - r * dh
    tw = v + pw - s * dw
    if th < 0 or tw < 0 or th % sh != 0 or tw % sw != 0 or th // sh >= P or tw // sw >= Q:
        return 0
    return gy[((n * K + g * (K // G) + k) * P + th // sh) * Q + tw // sw]


@cuda.jit(device=True)
def bwi_store(gx, unused, has_bias, g, c, nhv, chunk, v, geo):
    C, H, W, G = geo[1], geo[2], geo[3], geo[9]
    HW = H * W
    n = nhv // HW
    gx[(n * C + g * (C // G) + c) * HW + nhv - n * HW] = v


# --- grad-weight: A = gy seen as [Kg, N*P*Q], B = X transposed, C = partial sums [chunks, K, Cg*R*S] ---

@cuda.jit(device=True)
def bww_a(gy, g, k, npq, geo):
    K, P, Q, G = geo[4], geo[7], geo[8], geo[9]
    PQ = P * Q
    n = npq // PQ
    return gy[(n * K + g * (K // G) + k) * PQ + npq - n * PQ]


@cuda.jit(device=True)
def bww_b(x, g, npq, crs, geo):
    return x_col(x, g, crs, npq, geo)


@cuda.jit(device=True)
def bww_store(part, unused, has_bias, g, k, crs, chunk, v, geo):
    C, K, R, S, G = geo[1], geo[4], geo[5], geo[6], geo[9]
    CRS = (C // G) * R * S
    part[(chunk * K + g * (K // G) + k) * CRS + crs] = v


def make_gemm(load_a, load_b, store, scalar):
    """out[g][m, n] = sum_{kk in this block's chunk} A_g[m, kk] * B_g[kk, n] for an M x Ncol x Kdim
    product per group. Grid: (Ncol tiles, M tiles, G * chunks); block: (TILE, TILE)."""

    @cuda.jit
    def gemm(a_src, b_src, out, bias, has_bias, geo, M, Ncol, Kdim, kchunk, G):
        sa = cuda.shared.array((TILE, TILE), dtype=scalar)
        sb = cuda.shared.array((TILE, TILE), dtype=scalar)
        tx = np.int64(cuda.threadIdx.x)
        ty = np.int64(cuda.threadIdx.y)
        m0 = np.int64(cuda.blockIdx.y) * TILE
        col = np.int64(cuda.blockIdx.x) * TILE + tx
        g = np.int64(cuda.blockIdx.z) % G
        chunk = np.int64(cuda.blockIdx.z) // G
        k_begin = chunk * kchunk
        k_end = min(Kdim, k_begin + kchunk)
        acc = scalar(0)
        for kt in range(k_begin, k_end, TILE):
            # every thread loads one element of each tile (0 outside the matrices)
            if m0 + ty < M and kt + tx < k_end:
                sa[ty, tx] = load_a(a_src, g, m0 + ty, kt + tx, geo)
            else:
                sa[ty, tx] = 0
            if kt + ty < k_end and col < Ncol:
                sb[ty, tx] = load_b(b_src, g, kt + ty, col, geo)
            else:
                sb[ty, tx] = 0
            cuda.syncthreads()
            for i in range(TILE):
                acc += sa[ty, i] * sb[i, tx]
            cuda.syncthreads()
        if m0 + ty < M and col < Ncol:
            store(out, bias, has_bias, g, m0 + ty, col, chunk, acc, geo)

    return gemm


class Im2colKernels(NamedTuple):
    forward: object  # GEMM kernels over the implicit column matrix
    backward_input: object
    backward_weight: object  # per-chunk partial sums of the N*P*Q reduction
    reduce_chunks: object  # sums the chunks in order


@functools.lru_cache(maxsize=None)
def build(scalar):
    """(forward, grad-input, grad-weight) GEMM kernels and the chunk reduction for one element type."""

    @cuda.jit
    def reduce_chunks(part, chunks, n, gw):
        """gw[e] = sum over chunks of part[chunk, e], in chunk order."""
        i = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
        while i < n:
            acc = scalar(0)
            for ch in range(chunks):
                acc += part[ch * n + i]
            gw[i] = acc
            i += step

    return Im2colKernels(make_gemm(fwd_a, fwd_b, fwd_store, scalar), make_gemm(bwi_a, bwi_b, bwi_store, scalar),
                         make_gemm(bww_a, bww_b, bww_store, scalar), reduce_chunks)
