"""Convolution as matrix multiplication (im2col + our blocked GEMM), NCHW, any stride, padding,
dilation and group count. Per image and group g, with CRS = Cg*R*S reduction rows:

  col[(c,r,s), p*Q+q] = x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)
  forward      Y_g[Kg x PQ]   = W_g[Kg x CRS] . col_g[CRS x PQ]  (+ bias)
  grad-input   dcol_g[CRS x PQ] = W_g^T . dY_g,  then col2im: gx[c, h, w] = sum of dcol entries mapped there
               (stride 1: instead the forward path on gy with the rotated, channel-transposed filter)
  grad-weight  dW_g[Kg x CRS] += dY_g[Kg x PQ] . col_g^T           (summed over images)
  grad-bias    as the direct algorithm

The GEMM reads both factors as rows contiguous along the reduction axis (kernels/cpu/gemm.py), so
the forward pass builds col_g^T (im2row: rows[g, p*Q+q, (c,r,s)], one output row at a time through
an L2-resident im2col tile), grad-weight uses col as is (several images side by side, so that the
reduction over pixels is long even for 7x7 outputs), and grad-input transposes dY (W^T once per call).

Threads: with at least as many images as threads, one prange task per thread ("run") takes a
contiguous range of images with its own scratch and runs everything serially (no parallel region
per image or per GEMM); grad-weight's runs accumulate private dW that are summed in run order
(deterministic for a given thread count). With fewer images, the images go one by one and every
step (im2col, GEMM, col2im) is split across the threads instead.
"""
import numpy as np
from numba import njit, prange

from . import conv_direct
from .gemm import gemm_nt, gemm_serial, transpose_into

RED = 256  # grad-weight: pixels (images x P*Q) per GEMM, at least this many when the images allow


@njit(cache=True)
def im2col_part(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, c0, c1, col, off):
    """col[(c*R + r)*S + s, off + p*Q + q] for channels c0 <= c < c1 of one image x (C, H, W)."""
    for c in range(c0, c1):
        for r in range(R):
            for s in range(S):
                dst = col[(c * R + r) * S + s, off:off + P * Q]
                for p in range(P):
                    h = p * sh - ph + r * dh
                    o = p * Q
                    if h < 0 or h >= H:
                        for q in range(Q):
                            dst[o + q] = 0
                        continue
                    xr = x[c, h]
                    for q in range(Q):
                        w = q * sw - pw + s * dw
                        dst[o + q] = xr[w] if 0 <= w < W else x.dtype.type(0)


@njit(cache=True)
def im2row_part(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, p0, p1, tile, rows):
    """rows[g, p*Q + q, (c*R + r)*S + s] = col[(gCg + c, r, s), p*Q + q] for output rows p0 <= p < p1:
    each output row is built as an im2col tile (C*R*S, Q) (contiguous writes), then transposed."""
    G, _, CgRS = rows.shape
    for p in range(p0, p1):
        im2col_part(x, C, H, W, R, S, 1, Q, sh, sw, ph - p * sh, pw, dh, dw, 0, C, tile, 0)
        for g in range(G):
            for q in range(Q):
                dst = rows[g, p * Q + q]
                for i in range(CgRS):
                    dst[i] = tile[g * CgRS + i, q]


@njit(cache=True)
def col2im_part(col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, c0, c1, gx):
    """gx[c, h, w] (c0 <= c < c1) = sum of the col entries mapped onto each pixel."""
    for c in range(c0, c1):
        for h in range(H):
            for w in range(W):
                gx[c, h, w] = 0
        for r in range(R):
            for s in range(S):
                src = col[(c * R + r) * S + s]
                for p in range(P):
                    h = p * sh - ph + r * dh
                    if h < 0 or h >= H:
                        continue
                    gr = gx[c, h]
                    for q in range(Q):
                        w = q * sw - pw + s * dw
                        if 0 <= w < W:
                            gr[w] += src[p * Q + q]


@njit(cache=True)
def add_bias(y, b):
    """y: (K, PQ)."""
    for k in range(y.shape[0]):
        y[k, :] += b[k]


# ------------------------------------------------------------ one run of images per thread ---

@njit(parallel=True, cache=True)
def forward_runs(x4, w3, b, has_bias, y3, R, S, P, Q, sh, sw, ph, pw, dh, dw, tiles, rows):
    N, C, H, W = x4.shape
    G, Kg, _ = w3.shape
    runs = rows.shape[0]
    for run in prange(runs):
        for n in range(run * N // runs, (run + 1) * N // runs):
            im2row_part(x4[n], C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, 0, P, tiles[run], rows[run])
            for g in range(G):
                gemm_serial(w3[g], rows[run, g], y3[n, g * Kg:(g + 1) * Kg], False)
            if has_bias:
                add_bias(y3[n], b)


@njit(parallel=True, cache=True)
def backward_input_runs(gy3, wt, gx4, R, S, P, Q, sh, sw, ph, pw, dh, dw, gyt, dcol):
    N, C, H, W = gx4.shape
    G, CgRS, Kg = wt.shape
    runs = dcol.shape[0]
    for run in prange(runs):
        for n in range(run * N // runs, (run + 1) * N // runs):
            for g in range(G):
                transpose_into(gy3[n, g * Kg:(g + 1) * Kg], gyt[run])
                gemm_serial(wt[g], gyt[run], dcol[run, g * CgRS:(g + 1) * CgRS], False)
            col2im_part(dcol[run], C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, 0, C, gx4[n])


@njit(parallel=True, cache=True)
def backward_weight_runs(x4, gy3, R, S, P, Q, sh, sw, ph, pw, dh, dw, nb, col, gyc, gwr):
    """gwr[run, g] = the run's sum of dY_g . col_g^T, nb images per GEMM."""
    N, C, H, W = x4.shape
    runs, G, Kg, CgRS = gwr.shape
    PQ = P * Q
    for run in prange(runs):
        gwr[run] = 0
        n1 = (run + 1) * N // runs
        for n0 in range(run * N // runs, n1, nb):
            m = min(nb, n1 - n0)
            for i in range(m):
                im2col_part(x4[n0 + i], C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, 0, C, col[run], i * PQ)
                for k in range(G * Kg):
                    gyc[run, k, i * PQ:(i + 1) * PQ] = gy3[n0 + i, k]
            if m < nb:  # a short last chunk: zero columns add 0 * 0
                col[run, :, m * PQ:] = 0
                gyc[run, :, m * PQ:] = 0
            for g in range(G):
                gemm_serial(gyc[run, g * Kg:(g + 1) * Kg], col[run, g * CgRS:(g + 1) * CgRS], gwr[run, g], True)


@njit(cache=True)
def sum_runs(gwr, gw):
    """gw = sum over runs of gwr, in run order."""
    gw[:] = gwr[0]
    for r in range(1, gwr.shape[0]):
        gw += gwr[r]


# ----------------------------------------- fewer images than threads: each step split instead ---

@njit(parallel=True, cache=True)
def im2col_split(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, parts, col):
    for t in prange(parts):
        im2col_part(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, t * C // parts, (t + 1) * C // parts, col, 0)


@njit(parallel=True, cache=True)
def im2row_split(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, tiles, rows):
    parts = tiles.shape[0]
    for t in prange(parts):
        im2row_part(x, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, t * P // parts, (t + 1) * P // parts, tiles[t],
                    rows)


@njit(parallel=True, cache=True)
def col2im_split(col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, parts, gx):
    for t in prange(parts):
        col2im_part(col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, t * C // parts, (t + 1) * C // parts, gx)


# ------------------------------------------------------------------------------ Python side ---

def _threads():
    import numba

    return numba.get_num_threads()


def _geometry(s):
    return (s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w)


def _runs(N):
    """Threads used image by image (runs), or 0 when there are fewer images than threads."""
    t = _threads()
    return min(N, t) if N >= t else 0


def forward(x, w, b, y, s):
    if s.N == 0 or s.K == 0 or s.P == 0 or s.Q == 0:
        return
    Cg, Kg, PQ, RS = s.C // s.G, s.K // s.G, s.P * s.Q, s.R * s.S
    x4 = x.reshape(s.N, s.C, s.H, s.W)
    y3 = y.reshape(s.N, s.K, PQ)
    w3 = w.reshape(s.G, Kg, Cg * RS)
    geo = (s.R, s.S, s.P, s.Q, *_geometry(s))
    runs = _runs(s.N)
    parts = runs or _threads()
    tiles = np.empty((parts, s.C * RS, s.Q), dtype=y.dtype)
    has_bias = b is not None
    bb = b if has_bias else np.zeros(1, dtype=y.dtype)
    if runs:
        rows = np.empty((runs, s.G, PQ, Cg * RS), dtype=y.dtype)
        forward_runs(x4, w3, bb, has_bias, y3, *geo, tiles, rows)
        return
    rows = np.empty((s.G, PQ, Cg * RS), dtype=y.dtype)
    for n in range(s.N):
        im2row_split(x4[n], s.C, s.H, s.W, *geo, tiles, rows)
        for g in range(s.G):
            gemm_nt(w3[g], rows[g], y3[n, g * Kg:(g + 1) * Kg], False)
        if has_bias:
            add_bias(y3[n], b)


def transposed_problem(w, s):
    """Stride 1: grad-input is the forward convolution of gy with the rotated, channel-transposed filter
    w'[gCg + c, k, r, s] = w[gKg + k, c, R-1-r, S-1-s] and padding dil*(R-1) - pad (negative = crop), whose
    GEMM reduces over Kg*R*S instead of Kg (long dot products for the GEMM)."""
    Cg, Kg = s.C // s.G, s.K // s.G
    wt = w.reshape(s.G, Kg, Cg, s.R, s.S)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    st = s._replace(C=s.K, H=s.P, W=s.Q, K=s.C, P=s.H, Q=s.W, pad_h=s.dil_h * (s.R - 1) - s.pad_h,
                    pad_w=s.dil_w * (s.S - 1) - s.pad_w)
    return np.ascontiguousarray(wt).reshape(-1), st


def backward_input(gy, w, gx, s):
    if s.N == 0 or s.C == 0 or s.H == 0 or s.W == 0:
        return
    if s.K == 0:
        gx[:] = 0
        return
    if s.stride_h == 1 and s.stride_w == 1:
        wt, st = transposed_problem(w, s)
        forward(gy, wt, None, gx, st)
        return
    Cg, Kg, PQ, RS = s.C // s.G, s.K // s.G, s.P * s.Q, s.R * s.S
    gy3 = gy.reshape(s.N, s.K, PQ)
    gx4 = gx.reshape(s.N, s.C, s.H, s.W)
    # W_g^T with rows along K: the GEMM's left factor, once per call
    wt = np.ascontiguousarray(w.reshape(s.G, Kg, Cg * RS).transpose(0, 2, 1))
    geo = (s.R, s.S, s.P, s.Q, *_geometry(s))
    runs = _runs(s.N)
    if runs:
        gyt = np.empty((runs, PQ, Kg), dtype=gx.dtype)
        dcol = np.empty((runs, s.C * RS, PQ), dtype=gx.dtype)
        backward_input_runs(gy3, wt, gx4, *geo, gyt, dcol)
        return
    dcol = np.empty((s.C * RS, PQ), dtype=gx.dtype)
    for n in range(s.N):
        for g in range(s.G):
            gyt = np.ascontiguousarray(gy3[n, g * Kg:(g + 1) * Kg].T)
            gemm_nt(wt[g], gyt, dcol[g * Cg * RS:(g + 1) * Cg * RS], False)
        col2im_split(dcol, s.C, s.H, s.W, *geo, _threads(), gx4[n])


def backward_weight(x, gy, gw, gb, s):
    PQ = s.P * s.Q
    if gb is not None:
        conv_direct.bias_grad(gy, s.N, s.K, PQ, gb)
    if gw is None:
        return
    Cg, Kg, RS = s.C // s.G, s.K // s.G, s.R * s.S
    if s.N == 0 or PQ == 0 or s.K == 0 or Cg == 0:
        gw[:] = 0
        return
    x4 = x.reshape(s.N, s.C, s.H, s.W)
    gy3 = gy.reshape(s.N, s.K, PQ)
    gw3 = gw.reshape(s.G, Kg, Cg * RS)
    geo = (s.R, s.S, s.P, s.Q, *_geometry(s))
    runs = _runs(s.N)
    if runs:
        per_run = -(-s.N // runs)
        nb = -(-per_run // -(-per_run // max(1, min(-(-RED // PQ), per_run))))  # even chunks: little zero padding
        col = np.empty((runs, s.C * RS, nb * PQ), dtype=x.dtype)
        gyc = np.empty((runs, s.K, nb * PQ), dtype=x.dtype)
        gwr = np.empty((runs, s.G, Kg, Cg * RS), dtype=x.dtype)
        backward_weight_runs(x4, gy3, *geo, nb, col, gyc, gwr)
        sum_runs(gwr, gw3)
        return
    gw[:] = 0
    col = np.empty((s.C * RS, PQ), dtype=x.dtype)
    for n in range(s.N):
        im2col_split(x4[n], s.C, s.H, s.W, *geo, _threads(), col)
        for g in range(s.G):
            gemm_nt(gy3[n, g * Kg:(g + 1) * Kg], col[g * Cg * RS:(g + 1) * Cg * RS], gw3[g], True)
