"""Direct convolution on the GPU, NCHW, float32 / float64, any stride, padding, dilation, groups.
Cg = C/G input and Kg = K/G output channels per group; channel k belongs to group g = k / Kg.

  forward      y[n,k,p,q] = b[k] + sum_{c<Cg,r,s} w[k,c,r,s] * x[n, gCg+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
               one thread per output element
  grad-input   gx[n,gCg+c,h,v] = sum_{k<Kg,r,s} w[gKg+k,c,r,s] * gy[n, gKg+k, (h + ph - r*dh)/sh, (v + pw - s*dw)/sw]
               over the taps where both divisions are exact and in range; one thread per input element (a gather)
  grad-weight  gw[k,c,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, gCg+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
               one block per weight element, reducing over N*P*Q in a fixed tree (deterministic)
  grad-bias    gb[k] = sum_{n,p,q} gy[n,k,p,q], one block per output channel
All index math is 64-bit; every kernel walks its elements with a grid-stride loop.
"""
import functools
from typing import NamedTuple

import numpy as np
from numba import cuda

from ._common import THREADS, block_sum, grid_start_step


class DirectKernels(NamedTuple):
    forward: object
    backward_input: object
    backward_weight: object
    bias_grad: object  # gb[k] = sum over n, p, q of gy (every algorithm's grad-bias)


@functools.lru_cache(maxsize=None)
def build(scalar):
    """The kernels for one element type (np.float32 / np.float64): the accumulators and the
    shared reduction buffers take that type."""

    @cuda.jit
    def forward(x, w, b, has_bias, y, geo):
        N, C, H, W, K, R, S, P, Q, G, sh, sw, ph, pw, dh, dw = geo
        Cg = C // G
        Kg = K // G
        i, step = grid_start_step()
        total = N * K * P * Q
        while i < total:
            q = i % Q
            t = i // Q
            p = t % P
            t //= P
            k = t % K
            n = t // K
            h0 = p * sh - ph
            v0 = q * sw - pw
            acc = scalar(0)
            for c in range(Cg):
                xb = (n * C + (k // Kg) * Cg + c) * H * W
                wb = (k * Cg + c) * R * S
                for r in range(R):
                    h = h0 + r * dh
                    if h >= 0 and h < H:
                        for s in range(S):
                            v = v0 + s * dw
                            if v >= 0 and v < W:
                                acc += x[xb + h * W + v] * w[wb + r * S + s]
            if has_bias:
                acc += b[k]
            y[i] = acc
            i += step

    @cuda.jit
    def backward_input(gy, w, gx, geo):
        N, C, H, W, K, R, S, P, Q, G, sh, sw, ph, pw, dh, dw = geo
        Cg = C // G
        Kg = K // G
        i, step = grid_start_step()
        total = N * C * H * W
        while i < total:
            v = i % W
            t = i // W
            h = t % H
            t //= H
            c = t % C
            n = t // C
            g = c // Cg
            acc = scalar(0)
            for kk in range(Kg):
                k = g * Kg + kk
                gyb = (n * K + k) * P * Q
                wb = (k * Cg + c - g * Cg) * R * S
                for r in range(R):
                    th = h + ph - r * dh
                    if th < 0:
                        break  # th only decreases with r
                    if th % sh != 0 or th // sh >= P:
                        continue
                    p = th // sh
                    for s in range(S):
                        tw = v + pw - s * dw
                        if tw < 0:
                            break
                        if tw % sw != 0 or tw // sw >= Q:
                            continue
                        acc += gy[gyb + p * Q + tw // sw] * w[wb + r * S + s]
            gx[i] = acc
            i += step

    @cuda.jit
    def backward_weight(x, gy, gw, geo):
        N, C, H, W, K, R, S, P, Q, G, sh, sw, ph, pw, dh, dw = geo
        Cg = C // G
        Kg = K // G
        buf = cuda.shared.array(THREADS, dtype=scalar)
        PQ = P * Q
        nw = K * Cg * R * S
        for e in range(cuda.blockIdx.x, nw, cuda.gridDim.x):
            s = e % S
            t = e // S
            r = t % R
            t //= R
            k = t // Cg
            c = (k // Kg) * Cg + t % Cg  # input channel, in k's group
            acc = scalar(0)
            for j in range(cuda.threadIdx.x, N * PQ, cuda.blockDim.x):
                n = j // PQ
                pq = j - n * PQ
                p = pq // Q
                q = pq - p * Q
                h = p * sh - ph + r * dh
                v = q * sw - pw + s * dw
                if h >= 0 and h < H and v >= 0 and v < W:
                    acc += gy[(n * K + k) * PQ + pq] * x[((n * C + c) * H + h) * W + v]
            total = block_sum(buf, acc)
            if cuda.threadIdx.x == 0:
                gw[e] = total

    @cuda.jit
    def bias_grad(gy, gb, N, K, PQ):
        # float64 accumulation whatever the data type: grad-bias is a long sum (N*P*Q terms)
        buf = cuda.shared.array(THREADS, dtype=np.float64)
        for k in range(cuda.blockIdx.x, K, cuda.gridDim.x):
            acc = np.float64(0)
            for j in range(cuda.threadIdx.x, N * PQ, cuda.blockDim.x):
                n = j // PQ
                acc += gy[(n * K + k) * PQ + j - n * PQ]
            total = block_sum(buf, acc)
            if cuda.threadIdx.x == 0:
                gb[k] = scalar(total)

    return DirectKernels(forward, backward_input, backward_weight, bias_grad)
