"""Convolution as matrix multiplication (im2col + our blocked GEMM), NCHW, any stride, padding,
dilation and group count. Per image and group g, with CRS = Cg*R*S reduction rows:

  col[(c,r,s), p*Q+q] = x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)
  forward      Y_g[Kg x PQ]   = W_g[Kg x CRS] . col_g[CRS x PQ]  (+ bias)
  grad-input   dcol_g[CRS x PQ] = W_g^T . dY_g,  then col2im: gx[c, h, w] = sum of dcol entries mapped there
  grad-weight  dW_g[Kg x CRS] += dY_g[Kg x PQ] . col_g^T           (summed over images)
  grad-bias    as the direct algorithm

The GEMM reads both factors as rows contiguous along the reduction axis (kernels/cpu/gemm.py), so
the forward pass builds col_g^T directly (im2row: rows[g, p*Q+q, (c,r,s)]), grad-weight uses col as
is, and grad-input transposes dY once per image (W^T once per call).
"""
import numpy as np
from numba import njit, prange

from . import conv_direct
from .gemm import gemm


@njit(parallel=True, cache=True)
def im2col(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, col):
    """x: one image (C, H, W); col: (C*R*S, P*Q)."""
    for crs in prange(C * R * S):
        c = crs // (R * S)
        r = (crs // S) % R
        s = crs % S
        for p in range(P):
            h = p * sh - ph + r * dh
            o = p * Q
            if h < 0 or h >= H:
                for q in range(Q):
                    col[crs, o + q] = 0
                continue
            for q in range(Q):
                w = q * sw - pw + s * dw
                col[crs, o + q] = x[c, h, w] if 0 <= w < W else x.dtype.type(0)


@njit(parallel=True, cache=True)
def im2row(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, rows):
    """x: one image (C, H, W); rows: (G, P*Q, Cg*R*S), rows[g, p*Q+q, (c*R + r)*S + s] = col[(gCg+c, r, s), p*Q+q]."""
    Cg = C // rows.shape[0]
    for p in prange(P):
        for q in range(Q):
            for c in range(C):
                dst = rows[c // Cg, p * Q + q]
                o = (c % Cg) * R * S
                for r in range(R):
                    h = p * sh - ph + r * dh
                    inside = 0 <= h < H
                    for s in range(S):
                        w = q * sw - pw + s * dw
                        dst[o + r * S + s] = x[c, h, w] if inside and 0 <= w < W else x.dtype.type(0)


@njit(parallel=True, cache=True)
def col2im(col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, gx):
    """gx (C, H, W) = sum of col entries mapped onto each pixel; one task per channel, so no races."""
    for c in prange(C):
        for h in range(H):
            for w in range(W):
                gx[c, h, w] = 0
        for r in range(R):
            for s in range(S):
                crs = (c * R + r) * S + s
                for p in range(P):
                    h = p * sh - ph + r * dh
                    if h < 0 or h >= H:
                        continue
                    for q in range(Q):
                        w = q * sw - pw + s * dw
                        if 0 <= w < W:
                            gx[c, h, w] += col[crs, p * Q + q]


@njit(parallel=True, cache=True)
def add_bias(y, b):
    """y: (K, PQ)."""
    for k in prange(y.shape[0]):
        for i in range(y.shape[1]):
            y[k, i] += b[k]


def _geometry(s):
    return (s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w)


def forward(x, w, b, y, s):
    if s.N == 0 or s.K == 0 or s.P == 0 or s.Q == 0:
        return
    Cg, Kg, PQ, RS = s.C // s.G, s.K // s.G, s.P * s.Q, s.R * s.S
    x4 = x.reshape(s.N, s.C, s.H, s.W)
    y3 = y.reshape(s.N, s.K, PQ)
    w3 = w.reshape(s.G, Kg, Cg * RS)
    rows = np.empty((s.G, PQ, Cg * RS), dtype=y.dtype)
    for n in range(s.N):
        im2row(x4[n], s.C, s.H, s.W, s.R, s.S, s.P, s.Q, *_geometry(s), rows)
        for g in range(s.G):
            gemm(w3[g], rows[g].T, y3[n, g * Kg:(g + 1) * Kg], False)
        if b is not None:
            add_bias(y3[n], b)


def backward_input(gy, w, gx, s):
    if s.N == 0 or s.C == 0 or s.H == 0 or s.W == 0:
        return
    Cg, Kg, PQ, RS = s.C // s.G, s.K // s.G, s.P * s.Q, s.R * s.S
    gy3 = gy.reshape(s.N, s.K, PQ)
    w3 = w.reshape(s.G, Kg, Cg * RS)
    gx4 = gx.reshape(s.N, s.C, s.H, s.W)
    wt = [np.ascontiguousarray(w3[g].T) for g in range(s.G)]  # the GEMM's rows along K, once per call
    dcol = np.empty((s.C * RS, PQ), dtype=gx.dtype)
    for n in range(s.N):
        for g in range(s.G):
            gemm(wt[g], gy3[n, g * Kg:(g + 1) * Kg], dcol[g * Cg * RS:(g + 1) * Cg * RS], False)
        col2im(dcol, s.C, s.H, s.W, s.R, s.S, s.P, s.Q, *_geometry(s), gx4[n])


def backward_weight(x, gy, gw, gb, s):
    PQ = s.P * s.Q
    if gb is not None:
        conv_direct.bias_grad(gy, s.N, s.K, PQ, gb)
    if gw is None:
        return
    gw[:] = 0
    Cg, Kg, RS = s.C // s.G, s.K // s.G, s.R * s.S
    if s.N == 0 or PQ == 0 or s.K == 0 or Cg == 0:
        return
    x4 = x.reshape(s.N, s.C, s.H, s.W)
    gy3 = gy.reshape(s.N, s.K, PQ)
    gw3 = gw.reshape(s.G, Kg, Cg * RS)
    col = np.empty((s.C * RS, PQ), dtype=x.dtype)
    for n in range(s.N):
        im2col(x4[n], s.C, s.H, s.W, s.R, s.S, s.P, s.Q, *_geometry(s), col)
        for g in range(s.G):
            gemm(gy3[n, g * Kg:(g + 1) * Kg], col[g * Cg * RS:(g + 1) * Cg * RS].T, gw3[g], True)
