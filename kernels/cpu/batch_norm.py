"""Batch normalization over x[N, C, L] per channel c, float32 / float64 (statistics accumulated in
float64 whatever the data type):

  training  mean = sum x / M,  var = sum (x - mean)^2 / M  (two passes, M = N*L),  invstd = 1/sqrt(var + eps)
            running_mean = (1-m) running_mean + m mean,  running_var = (1-m) running_var + m var * M/(M-1)
  eval      mean = running_mean, invstd = 1/sqrt(running_var + eps)
  y = (x - mean) * invstd * weight + bias
  backward  xhat = (x - mean) invstd,  gb = sum gy,  gw = sum gy xhat
            training: gx = weight invstd (gy - gb/M - xhat gw/M);  eval: gx = weight invstd gy
  fused ReLU  forward y = max(y, 0) (NaN stays NaN); backward gy = (z <= 0 ? 0 : gz) from the output z
  given statistics (stats[0, c] = sum y, stats[1, c] = sum y^2 of the conv output, channel_sums):
            mean = s0/M, var = max(s1/M - mean^2, 0), no statistics pass
One parallel task per channel.
"""
import numpy as np
from numba import njit, prange

from ._tile import FM_REDUCE


@njit(parallel=True, cache=True, fastmath=FM_REDUCE)
def forward(x, weight, has_weight, bias, has_bias, rmean, rvar, has_running, y, save_mean, save_invstd,
            N, C, L, training, momentum, eps, stats, has_stats, relu):
    M = N * L
    for c in prange(C):
        if training and M == 0:  # empty batch: nothing to normalize, running statistics unchanged
            save_mean[c] = 0.0
            save_invstd[c] = 0.0
            continue
        if training and has_stats:
            mean = stats[c] / M
            var = max(stats[C + c] / M - mean * mean, 0.0)
            ss = var * M
            invstd = 1.0 / np.sqrt(var + eps)
            if has_running:
                rmean[c] = (1.0 - momentum) * rmean[c] + momentum * mean
                unbiased = ss / (M - 1) if M > 1 else np.inf
                rvar[c] = (1.0 - momentum) * rvar[c] + momentum * unbiased
        elif training:
            s = 0.0
            for n in range(N):
                o = (n * C + c) * L
                for i in range(L):
                    s += np.float64(x[o + i])
            mean = s / M
            ss = 0.0
            for n in range(N):
                o = (n * C + c) * L
                for i in range(L):
                    d = np.float64(x[o + i]) - mean
                    ss += d * d
            var = ss / M
            invstd = 1.0 / np.sqrt(var + eps)
            if has_running:
                rmean[c] = (1.0 - momentum) * rmean[c] + momentum * mean
                unbiased = ss / (M - 1) if M > 1 else np.inf
                rvar[c] = (1.0 - momentum) * rvar[c] + momentum * unbiased
        else:
            mean = np.float64(rmean[c])
            invstd = 1.0 / np.sqrt(np.float64(rvar[c]) + eps)
        save_mean[c] = mean
        save_invstd[c] = invstd
        scale = invstd * (np.float64(weight[c]) if has_weight else 1.0)
        shift = (np.float64(bias[c]) if has_bias else 0.0) - mean * scale
        sc = y.dtype.type(scale)
        sh = y.dtype.type(shift)
        zero = y.dtype.type(0)
        for n in range(N):
            o = (n * C + c) * L
            for i in range(L):
                v = x[o + i] * sc + sh
                y[o + i] = zero if relu and v < zero else v


@njit(parallel=True, cache=True, fastmath=FM_REDUCE)
def channel_sums(y, stats, N, C, L):
    """stats[c] = sum of y[:, c], stats[C + c] = sum of y[:, c]^2, in float64."""
    for c in prange(C):
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            o = (n * C + c) * L
            for i in range(L):
                v = np.float64(y[o + i])
                s1 += v
                s2 += v * v
        stats[c] = s1
        stats[C + c] = s2


@njit(parallel=True, cache=True, fastmath=FM_REDUCE)
def backward(gy, x, weight, has_weight, save_mean, save_invstd, gx, want_gx, gw, want_gw, gb, want_gb,
             N, C, L, training, z, has_z):
    M = N * L
    for c in prange(C):
        mean = np.float64(save_mean[c])
        invstd = np.float64(save_invstd[c])
        sg = 0.0
        sgx = 0.0
        for n in range(N):
            o = (n * C + c) * L
            for i in range(L):
                g = 0.0 if has_z and z[o + i] <= 0 else np.float64(gy[o + i])
                sg += g
                sgx += g * (np.float64(x[o + i]) - mean)
        if want_gb:
            gb[c] = sg
        if want_gw:
            gw[c] = sgx * invstd
        if want_gx:
            wscale = invstd * (np.float64(weight[c]) if has_weight else 1.0)
            if training:
                # gx = wscale * (gy - sg/M - (x - mean) * invstd^2 * sgx/M)
                # (x - mean) in float64: folding mean into a constant cancels badly for small M
                k = invstd * invstd * sgx / M
                mg = sg / M
                for n in range(N):
                    o = (n * C + c) * L
                    for i in range(L):
                        g = 0.0 if has_z and z[o + i] <= 0 else np.float64(gy[o + i])
                        gx[o + i] = wscale * (g - mg - (np.float64(x[o + i]) - mean) * k)
            else:
                a = gx.dtype.type(wscale)
                zero = gx.dtype.type(0)
                for n in range(N):
                    o = (n * C + c) * L
                    for i in range(L):
                        gx[o + i] = zero if has_z and z[o + i] <= 0 else a * gy[o + i]
