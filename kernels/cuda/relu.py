"""The activations of the fused ops, one thread per element (grid-stride):
  forward   x = act(x + r), in place   r: an optional residual (has_r); act 0 none, 1 ReLU, 2 ReLU6
            (pyconv.problem.ACTIVATIONS); comparisons are false for NaN, so NaN propagates as in torch
  backward  gx = 0 if z <= 0 else gz   (ReLU; the mask is recomputed from the output)
"""
from numba import cuda

from ._common import grid_start_step


@cuda.jit
def activation_forward(x, r, has_r, act):
    i, step = grid_start_step()
    while i < x.size:
        v = x[i] + r[i] if has_r else x[i]
        if act >= 1 and v < 0:
            v = 0
        if act == 2 and v > 6:
            v = 6
        x[i] = v
        i += step


@cuda.jit
def backward(gz, z, gx):
    i, step = grid_start_step()
    while i < z.size:
        gx[i] = 0 if z[i] <= 0 else gz[i]
        i += step
