"""Winograd convolution F(m x m, 3 x 3), m in {2, 4}, on the GPU (numba.cuda), NCHW, float32 / float64.

Same math and matrices as kernels/cpu/winograd.py (see there; alpha = m + 2, tiles of m x m outputs):

  forward      Y_tile[k] = A^T [ sum_c U[k,c] . V[c] ] A,   U = G g[k,c] G^T,  V = B^T d B
  grad-input   the forward of gy with the rotated, channel-transposed filter, padding 2 - pad
  grad-weight  dg[k,c] = G^T [ sum_{tiles} Z[k] . V[c] ] G,  Z = A dY A^T

Four kernels, with the transformed tensors in global memory (batch index b = g * alpha^2 + xi):
  transform_filters  U[b][k][c]                one thread per filter
  transform_input    V[b][c][tile]             one thread per (g, c, tile)
  batched GEMM       M[b][k][tile] = U[b] V[b]  conv_im2col.make_gemm (shared-memory tiles), batch on grid z
  transform_output   y = A^T M A + bias        one thread per (g, k, tile), clipped at P x Q
grad-weight: transform_input, transform_grad_output Z[b][k][tile], the GEMM dU[b][k][c] = Z[b] V[b]^T
with the tile sum split in chunks (grid z = batch x chunk, partial sums per chunk) and
weight_grad_finish, which adds the chunks in order (deterministic) and applies G^T . G.
The kernels are built per (element type, m): the matrices are compile-time constant arrays.
"""
import functools
from typing import NamedTuple

import numpy as np
from numba import cuda

from ..cpu.winograd import MATRICES
from ._common import grid_start_step
from .conv_im2col import make_gemm

# geo of the batched GEMMs: (Cin, Kout, tiles, batches)


@cuda.jit(device=True)
def u_a(U, b, k, c, geo):
    return U[(b * geo[1] + k) * geo[0] + c]


@cuda.jit(device=True)
def v_b(V, b, c, t, geo):
    return V[(b * geo[0] + c) * geo[2] + t]


@cuda.jit(device=True)
def m_store(Mo, unused, has_bias, b, k, t, chunk, v, geo):
    Mo[(b * geo[1] + k) * geo[2] + t] = v


@cuda.jit(device=True)
def z_a(Z, b, k, t, geo):
    return Z[(b * geo[1] + k) * geo[2] + t]


@cuda.jit(device=True)
def vt_b(V, b, t, c, geo):
    return V[(b * geo[0] + c) * geo[2] + t]


@cuda.jit(device=True)
def du_store(part, unused, has_bias, b, k, c, chunk, v, geo):
    part[((chunk * geo[3] + b) * geo[1] + k) * geo[0] + c] = v


class WinogradKernels(NamedTuple):
    transform_filters: object  # U = G g G^T
    transform_input: object  # V = B^T d B
    gemm: object  # M = U . V, (m+2)^2 GEMMs over channels
    transform_output: object  # Y = A^T M A (+ bias)
    transform_grad_output: object  # Z = A dY A^T
    weight_grad_gemm: object  # dU = Z . V^T, in chunks of tiles
    weight_grad_finish: object  # chunk sum, then dg = G^T dU G


@functools.lru_cache(maxsize=None)
def build(scalar, m):
    """(transform_filters, transform_input, gemm, transform_output, transform_grad_output, wgrad_gemm,
    weight_grad_finish) for one element type and tile size."""
    A = m + 2
    AA = A * A
    BT, Gm, AT = (np.ascontiguousarray(a, dtype=scalar) for a in MATRICES[m])
    Am = np.ascontiguousarray(AT.T)   # A (alpha x m)
    Gt = np.ascontiguousarray(Gm.T)   # G^T (3 x alpha)

    @cuda.jit(device=True)
    def sandwich(L, R, X, tmp, Y):
        """Y[i*J + j] = sum_{a,b} L[i,a] R[j,b] X[a*B + b]; zero coefficients skipped."""
        I, Ad = L.shape
        J, B = R.shape
        for i in range(I):
            for b in range(B):
                s = scalar(0)
                for a in range(Ad):
                    c = L[i, a]
                    if c != 0:
                        s += c * X[a * B + b]
                tmp[i * B + b] = s
        for i in range(I):
            for j in range(J):
                s = scalar(0)
                for b in range(B):
                    c = R[j, b]
                    if c != 0:
                        s += c * tmp[i * B + b]
                Y[i * J + j] = s

    @cuda.jit
    def transform_filters(w, transposed, Gr, Cin, Kout, U):
        """U[g*AA + xi][k][c] = (G f G^T)[xi]; transposed: grad-input's filter (k = forward input channel,
        c = forward output channel, rotated 180 degrees)."""
        f = cuda.local.array(9, scalar)
        tmp = cuda.local.array(3 * A, scalar)
        u = cuda.local.array(AA, scalar)
        i, step = grid_start_step()
        while i < Gr * Kout * Cin:
            c = i % Cin
            k = (i // Cin) % Kout
            g = i // (Cin * Kout)
            for rs in range(9):
                if transposed:
                    f[rs] = w[((g * Cin + c) * Kout + k) * 9 + 8 - rs]
                else:
                    f[rs] = w[((g * Kout + k) * Cin + c) * 9 + rs]
            sandwich(Gm, Gm, f, tmp, u)
            for xi in range(AA):
                U[((g * AA + xi) * Kout + k) * Cin + c] = u[xi]
            i += step

    @cuda.jit(device=True)
    def tile_origin(t, th, tw):
        return t // (th * tw), (t // tw) % th * m, t % tw * m

    @cuda.jit
    def transform_input(x, Gr, Cin, H, W, th, tw, tiles, pad_h, pad_w, V):
        """V[g*AA + xi][c][t] = (B^T d B)[xi] of tile t, channel c of group g (0 outside the image)."""
        d = cuda.local.array(AA, scalar)
        tmp = cuda.local.array(AA, scalar)
        v = cuda.local.array(AA, scalar)
        i, step = grid_start_step()
        while i < Gr * Cin * tiles:
            t = i % tiles
            c = (i // tiles) % Cin
            g = i // (tiles * Cin)
            n, p0, q0 = tile_origin(t, th, tw)
            base = ((n * Gr + g) * Cin + c) * H * W
            for a in range(A):
                yy = p0 - pad_h + a
                for b in range(A):
                    xx = q0 - pad_w + b
                    d[a * A + b] = x[base + yy * W + xx] if 0 <= yy < H and 0 <= xx < W else scalar(0)
            sandwich(BT, BT, d, tmp, v)
            for xi in range(AA):
                V[((g * AA + xi) * Cin + c) * tiles + t] = v[xi]
            i += step

    @cuda.jit
    def transform_output(Mo, bias, has_bias, Gr, Kout, P, Q, th, tw, tiles, y):
        """y tile t, channel k of group g = A^T M A (+ bias), clipped at P x Q."""
        mv = cuda.local.array(AA, scalar)
        tmp = cuda.local.array(AA, scalar)
        o = cuda.local.array(16, scalar)
        i, step = grid_start_step()
        while i < Gr * Kout * tiles:
            t = i % tiles
            k = (i // tiles) % Kout
            g = i // (tiles * Kout)
            for xi in range(AA):
                mv[xi] = Mo[((g * AA + xi) * Kout + k) * tiles + t]
            sandwich(AT, AT, mv, tmp, o)
            bv = bias[g * Kout + k] if has_bias else scalar(0)
            n, p0, q0 = tile_origin(t, th, tw)
            yk = ((n * Gr + g) * Kout + k) * P * Q
            for a in range(min(m, P - p0)):
                for b in range(min(m, Q - q0)):
                    y[yk + (p0 + a) * Q + q0 + b] = o[a * m + b] + bv
            i += step

    @cuda.jit
    def transform_grad_output(gy, Gr, Kout, P, Q, th, tw, tiles, Z):
        """Z[g*AA + xi][k][t] = (A dY A^T)[xi] of tile t (dY 0 outside P x Q)."""
        dy = cuda.local.array(16, scalar)
        tmp = cuda.local.array(AA, scalar)
        z = cuda.local.array(AA, scalar)
        i, step = grid_start_step()
        while i < Gr * Kout * tiles:
            t = i % tiles
            k = (i // tiles) % Kout
            g = i // (tiles * Kout)
            n, p0, q0 = tile_origin(t, th, tw)
            gk = ((n * Gr + g) * Kout + k) * P * Q
            for a in range(m):
                for b in range(m):
                    p = p0 + a
                    q = q0 + b
                    dy[a * m + b] = gy[gk + p * Q + q] if p < P and q < Q else scalar(0)
            sandwich(Am, Am, dy, tmp, z)
            for xi in range(AA):
                Z[((g * AA + xi) * Kout + k) * tiles + t] = z[xi]
            i += step

    @cuda.jit
    def weight_grad_finish(part, chunks, Gr, Cin, Kout, gw):
        """gw[g, k, c] = G^T (sum over chunks of part[chunk][g*AA + xi][k][c], in chunk order) G."""
        du = cuda.local.array(AA, scalar)
        tmp = cuda.local.array(3 * A, scalar)
        f = cuda.local.array(9, scalar)
        i, step = grid_start_step()
        per_chunk = Gr * AA * Kout * Cin
        while i < Gr * Kout * Cin:
            c = i % Cin
            k = (i // Cin) % Kout
            g = i // (Cin * Kout)
            for xi in range(AA):
                s = scalar(0)
                for ch in range(chunks):
                    s += part[ch * per_chunk + ((g * AA + xi) * Kout + k) * Cin + c]
                du[xi] = s
            sandwich(Gt, Gt, du, tmp, f)
            for rs in range(9):
                gw[((g * Kout + k) * Cin + c) * 9 + rs] = f[rs]
            i += step

    return WinogradKernels(transform_filters, transform_input, make_gemm(u_a, v_b, m_store, scalar), transform_output,
                           transform_grad_output, make_gemm(z_a, vt_b, du_store, scalar), weight_grad_finish)
