"""ReLU for the fused conv-BN-ReLU op, one thread per element (grid-stride):
  forward   z = 0 if x < 0 else x, in place  (NaN compares false, so NaN propagates as in torch)
  backward  gx = 0 if z <= 0 else gz         (the mask is recomputed from the output)
"""
from numba import cuda

from ._common import grid_start_step


@cuda.jit
def forward(x):
    i, step = grid_start_step()
    while i < x.size:
        if x[i] < 0:
            x[i] = 0
        i += step


@cuda.jit
def backward(gz, z, gx):
    i, step = grid_start_step()
    while i < z.size:
        gx[i] = 0 if z[i] <= 0 else gz[i]
        i += step
