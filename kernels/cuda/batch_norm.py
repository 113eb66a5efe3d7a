"""Batch normalization on the GPU over x[N, C, L] per channel c, float32 / float64; one block per
channel, statistics accumulated in float64 whatever the data type and summed by a fixed block tree:

  training  mean = sum x / M,  var = sum (x - mean)^2 / M  (two passes, M = N*L),  invstd = 1/sqrt(var + eps)
            running_mean = (1-m) running_mean + m mean,  running_var = (1-m) running_var + m var * M/(M-1)
            (an empty batch leaves the running statistics alone and saves mean = invstd = 0)
  eval      mean = running_mean, invstd = 1/sqrt(running_var + eps)
  y = (x - mean) * invstd * weight + bias
  backward  xhat = (x - mean) invstd,  gb = sum gy,  gw = sum gy xhat
            training: gx = weight invstd (gy - gb/M - xhat gw/M);  eval: gx = weight invstd gy
  fused ReLU  forward y = max(y, 0) (NaN stays NaN); backward gy = (z <= 0 ? 0 : gz) from the output z
  given statistics (stats[c] = sum y, stats[C + c] = sum y^2 of the conv output, channel_sums):
            mean = s0/M, var = max(s1/M - mean^2, 0), no statistics pass
"""
import functools
from typing import NamedTuple
import math

import numpy as np
from numba import cuda

from ._common import THREADS, block_sum


class BatchNormKernels(NamedTuple):
    forward: object
    backward: object
    channel_sums: object  # per-channel sum and sum of squares (the fused conv-BN statistics)


@functools.lru_cache(maxsize=None)
def build(scalar):
    """The batch-norm kernels for one element type (np.float32 / np.float64)."""

    @cuda.jit
    def forward(x, weight, has_weight, bias, has_bias, rmean, rvar, has_running, y, save_mean, save_invstd,
                N, C, L, training, momentum, eps, stats, has_stats, relu):
        buf = cuda.shared.array(THREADS, dtype=np.float64)
        tid = cuda.threadIdx.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            if training and M == 0:
                if tid == 0:
                    save_mean[c] = 0
                    save_invstd[c] = 0
                continue
            if training:
                if has_stats:
                    mean = stats[c] / M
                    ss = max(stats[C + c] / M - mean * mean, 0.0) * M
                else:
                    acc = 0.0
                    for j in range(tid, M, cuda.blockDim.x):
                        n = j // L
                        acc += np.float64(x[(n * C + c) * L + j - n * L])
                    mean = block_sum(buf, acc) / M
                    acc = 0.0
                    for j in range(tid, M, cuda.blockDim.x):
                        n = j // L
                        d = np.float64(x[(n * C + c) * L + j - n * L]) - mean
                        acc += d * d
                    ss = block_sum(buf, acc)
                invstd = 1.0 / math.sqrt(ss / M + eps)
                if tid == 0 and has_running:
                    rmean[c] = (1.0 - momentum) * rmean[c] + momentum * mean
                    unbiased = ss / (M - 1) if M > 1 else math.inf
                    rvar[c] = (1.0 - momentum) * rvar[c] + momentum * unbiased
            else:
                mean = np.float64(rmean[c])
                invstd = 1.0 / math.sqrt(np.float64(rvar[c]) + eps)
            if tid == 0:
                save_mean[c] = mean
                save_invstd[c] = invstd
            scale = invstd * (np.float64(weight[c]) if has_weight else 1.0)
            shift = (np.float64(bias[c]) if has_bias else 0.0) - mean * scale
            sc = scalar(scale)
            sf = scalar(shift)
            zero = scalar(0)
            for j in range(tid, M, cuda.blockDim.x):
                n = j // L
                o = (n * C + c) * L + j - n * L
                v = x[o] * sc + sf
                y[o] = zero if relu and v < zero else v

    @cuda.jit
    def backward(gy, x, weight, has_weight, save_mean, save_invstd, gx, want_gx, gw, want_gw, gb, want_gb,
                 N, C, L, training, z, has_z):
        buf = cuda.shared.array(THREADS, dtype=np.float64)
        tid = cuda.threadIdx.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            mean = np.float64(save_mean[c])
            invstd = np.float64(save_invstd[c])
            a_g = 0.0
            a_gx = 0.0
            for j in range(tid, M, cuda.blockDim.x):
                n = j // L
                o = (n * C + c) * L + j - n * L
                g = 0.0 if has_z and z[o] <= 0 else np.float64(gy[o])
                a_g += g
                a_gx += g * (np.float64(x[o]) - mean)
            sg = block_sum(buf, a_g)
            sgx = block_sum(buf, a_gx)
            if tid == 0:
                if want_gb:
                    gb[c] = sg
                if want_gw:
                    gw[c] = sgx * invstd
            if want_gx:
                wscale = invstd * (np.float64(weight[c]) if has_weight else 1.0)
                # (x - mean) in float64: folding mean into a constant cancels badly for small M
                stats = training and M > 0  # eval: the statistics are constants
                k = invstd * invstd * sgx / M if stats else 0.0
                mg = sg / M if stats else 0.0
                for j in range(tid, M, cuda.blockDim.x):
                    n = j // L
                    o = (n * C + c) * L + j - n * L
                    g = 0.0 if has_z and z[o] <= 0 else np.float64(gy[o])
                    gx[o] = wscale * (g - mg - (np.float64(x[o]) - mean) * k)

    @cuda.jit
    def channel_sums(y, stats, N, C, L):
        """stats[c] = sum of y[:, c], stats[C + c] = sum of y[:, c]^2, in float64; a block per channel."""
        buf = cuda.shared.array(THREADS, dtype=np.float64)
        tid = cuda.threadIdx.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            a1 = 0.0
            a2 = 0.0
            for j in range(tid, M, cuda.blockDim.x):
                n = j // L
                v = np.float64(y[(n * C + c) * L + j - n * L])
                a1 += v
                a2 += v * v
            s1 = block_sum(buf, a1)
            s2 = block_sum(buf, a2)
            if tid == 0:
                stats[c] = s1
                stats[C + c] = s2

    return BatchNormKernels(forward, backward, channel_sums)
