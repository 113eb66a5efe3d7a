"""2-D max and average pooling over N*C planes, NCHW, with torch's semantics.

  max  y[p,q] = max_{i<kh, j<kw, in range} x[p*sh - ph + i*dh, q*sw - pw + j*dw];  a NaN wins (the last one, as torch);
       idx[p,q] = flat h*W + w of the chosen element (the first valid one when every value is -inf)
       backward: gx = 0, gx[idx[p,q]] += gy[p,q]
  avg  window rows [p*sh - ph, min(p*sh - ph + kh, H + ph)), clipped to the image for the sum;
       divisor = divisor_override, else the window size with padding (count_include_pad) or without
       backward: gx[h,w] = sum over windows containing (h,w) of gy[p,q] / divisor(p,q)
One parallel task per plane (so the scatter of the backward passes has no races).
"""
import numpy as np
from numba import njit, prange

from ._tile import FM


@njit(parallel=True, cache=True, fastmath=FM)
def max_forward(x, y, idx, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw):
    for pl in prange(planes):
        xo = pl * H * W
        yo = pl * P * Q
        for p in range(P):
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                hs = h0
                while hs < 0:
                    hs += dh
                ws = w0
                while ws < 0:
                    ws += dw
                best_i = hs * W + ws
                best = -np.inf
                for i in range(kh):
                    h = h0 + i * dh
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = w0 + j * dw
                        if w < 0 or w >= W:
                            continue
                        v = x[xo + h * W + w]
                        if v > best or np.isnan(v):
                            best = v
                            best_i = h * W + w
                y[yo + p * Q + q] = best
                idx[yo + p * Q + q] = best_i


@njit(parallel=True, cache=True, fastmath=FM)
def max_backward(gy, idx, gx, planes, HW, PQ):
    for pl in prange(planes):
        for i in range(HW):
            gx[pl * HW + i] = 0
        for i in range(PQ):
            gx[pl * HW + idx[pl * PQ + i]] += gy[pl * PQ + i]


@njit(cache=True)
def avg_window(p, stride, pad, k, size):
    """(start, end, full_len) of an average-pool window along one axis."""
    start = p * stride - pad
    end = min(start + k, size + pad)
    full = end - start
    return max(start, 0), min(end, size), full


@njit(parallel=True, cache=True, fastmath=FM)
def avg_forward(x, y, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, include_pad, divisor_override):
    for pl in prange(planes):
        xo = pl * H * W
        yo = pl * P * Q
        for p in range(P):
            hs, he, hfull = avg_window(p, sh, ph, kh, H)
            for q in range(Q):
                ws, we, wfull = avg_window(q, sw, pw, kw, W)
                acc = y.dtype.type(0)
                for h in range(hs, he):
                    for w in range(ws, we):
                        acc += x[xo + h * W + w]
                if divisor_override != 0:
                    div = divisor_override
                elif include_pad:
                    div = hfull * wfull
                else:
                    div = (he - hs) * (we - ws)
                y[yo + p * Q + q] = acc / div


@njit(parallel=True, cache=True, fastmath=FM)
def avg_backward(gy, gx, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, include_pad, divisor_override):
    for pl in prange(planes):
        xo = pl * H * W
        yo = pl * P * Q
        for i in range(H * W):
            gx[xo + i] = 0
        for p in range(P):
            hs, he, hfull = avg_window(p, sh, ph, kh, H)
            for q in range(Q):
                ws, we, wfull = avg_window(q, sw, pw, kw, W)
                if divisor_override != 0:
                    div = divisor_override
                elif include_pad:
                    div = hfull * wfull
                else:
                    div = (he - hs) * (we - ws)
                g = gy[yo + p * Q + q] / div
                for h in range(hs, he):
                    for w in range(ws, we):
                        gx[xo + h * W + w] += g
