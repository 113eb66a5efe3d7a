"""The activations of the fused ops:
  forward   x = act(x + r)   r: an optional residual (has_r); act 0 none, 1 ReLU max(v, 0), 2 ReLU6
            min(max(v, 0), 6) (pyconv.problem.ACTIVATIONS); comparisons are false for NaN, so NaN
            propagates as in torch
  backward  gx = 0 if z <= 0 else gz  (ReLU; the mask is recomputed from the output)
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def activation_forward(x, r, has_r, act):
    for i in prange(x.size):
        v = x[i] + r[i] if has_r else x[i]
        if act >= 1 and v < 0:
            v = 0
        if act == 2 and v > 6:
            v = 6
        x[i] = v


@njit(parallel=True, cache=True)
def backward(gz, z, gx):
    for i in prange(z.size):
        gx[i] = 0 if z[i] <= 0 else gz[i]
