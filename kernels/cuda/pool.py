"""2-D max and average pooling on the GPU over N*C planes, NCHW, with torch's semantics.

  max  y[p,q] = max_{i<kh, j<kw, in range} x[p*sh - ph + i*dh, q*sw - pw + j*dw];  a NaN wins (the last one, as torch);
       idx[p,q] = flat h*W + w of the chosen element (the first valid one when every value is -inf)
       backward, one thread per input pixel (a gather, no atomics):
       gx[h,w] = sum of gy[p,q] over the windows whose tap (i,j) lands on (h,w) and whose idx[p,q] == h*W + w,
       p = (h + ph - i*dh)/sh exact and in range (likewise q)
  avg  window rows [p*sh - ph, min(p*sh - ph + kh, H + ph)), clipped to the image for the sum;
       divisor = divisor_override, else the window size with padding (count_include_pad) or without
       backward, one thread per input pixel: gx[h,w] = sum over windows containing (h,w) of gy[p,q] / divisor(p,q),
       p from ceil((h + ph - kh + 1)/sh) to floor((h + ph)/sh) (likewise q)
One thread per output element (forward) or input element (backward), grid-stride.
"""
import functools
from typing import NamedTuple
import math

from numba import cuda

from ._common import grid_start_step


@cuda.jit(device=True)
def avg_window(p, stride, pad, k, size):
    """(start, end, full_len) of an average-pool window along one axis."""
    start = p * stride - pad
    end = min(start + k, size + pad)
    return max(start, 0), min(end, size), end - start


@cuda.jit(device=True)
def avg_divisor(p, q, geo, include_pad, divisor_override):
    H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw = geo
    if divisor_override != 0:
        return divisor_override
    hs, he, hfull = avg_window(p, sh, ph, kh, H)
    ws, we, wfull = avg_window(q, sw, pw, kw, W)
    if include_pad:
        return hfull * wfull
    return (he - hs) * (we - ws)


class PoolKernels(NamedTuple):
    max_forward: object
    max_backward: object
    avg_forward: object
    avg_backward: object


@functools.lru_cache(maxsize=None)
def build(scalar):
    """The pooling kernels for one element type (np.float32 / np.float64)."""

    @cuda.jit
    def max_forward(x, y, idx, planes, geo):
        H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw = geo
        i, step = grid_start_step()
        while i < planes * P * Q:
            q = i % Q
            t = i // Q
            p = t % P
            pl = t // P
            h0 = p * sh - ph
            w0 = q * sw - pw
            hs = h0
            while hs < 0:
                hs += dh
            ws = w0
            while ws < 0:
                ws += dw
            best_i = hs * W + ws
            best = scalar(-math.inf)
            xo = pl * H * W
            for a in range(kh):
                h = h0 + a * dh
                if h < 0 or h >= H:
                    continue
                for b in range(kw):
                    v = w0 + b * dw
                    if v < 0 or v >= W:
                        continue
                    val = x[xo + h * W + v]
                    if val > best or math.isnan(val):
                        best = val
                        best_i = h * W + v
            y[i] = best
            idx[i] = best_i
            i += step

    @cuda.jit
    def max_backward(gy, idx, gx, planes, geo):
        H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw = geo
        i, step = grid_start_step()
        while i < planes * H * W:
            v = i % W
            t = i // W
            h = t % H
            pl = t // H
            yo = pl * P * Q
            me = h * W + v
            acc = scalar(0)
            for a in range(kh):
                th = h + ph - a * dh
                if th < 0:
                    break  # th only decreases with a
                if th % sh != 0 or th // sh >= P:
                    continue
                for b in range(kw):
                    tw = v + pw - b * dw
                    if tw < 0:
                        break
                    if tw % sw != 0 or tw // sw >= Q:
                        continue
                    o = yo + (th // sh) * Q + tw // sw
                    if idx[o] == me:
                        acc += gy[o]
            gx[i] = acc
            i += step

    @cuda.jit
    def avg_forward(x, y, planes, geo, include_pad, divisor_override):
        H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw = geo
        i, step = grid_start_step()
        while i < planes * P * Q:
            q = i % Q
            t = i // Q
            p = t % P
            pl = t // P
            hs, he, hfull = avg_window(p, sh, ph, kh, H)
            ws, we, wfull = avg_window(q, sw, pw, kw, W)
            acc = scalar(0)
            xo = pl * H * W
            for h in range(hs, he):
                for v in range(ws, we):
                    acc += x[xo + h * W + v]
            y[i] = acc / scalar(avg_divisor(p, q, geo, include_pad, divisor_override))
            i += step

    @cuda.jit
    def avg_backward(gy, gx, planes, geo, include_pad, divisor_override):
        H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw = geo
        i, step = grid_start_step()
        while i < planes * H * W:
            v = i % W
            t = i // W
            h = t % H
            pl = t // H
            yo = pl * P * Q
            acc = scalar(0)
            # floor division rounds toward -inf, so (a + s - 1) // s is ceil(a / s) for negative a too
            for p in range(max(0, (h + ph - kh + sh) // sh), min(P, (h + ph) // sh + 1)):
                for q in range(max(0, (v + pw - kw + sw) // sw), min(Q, (v + pw) // sw + 1)):
                    acc += gy[yo + p * Q + q] / scalar(avg_divisor(p, q, geo, include_pad, divisor_override))
            gx[i] = acc
            i += step

    return PoolKernels(max_forward, max_backward, avg_forward, avg_backward)
