"""ReLU for the fused conv-BN-ReLU op:
  forward   z = 0 if x < 0 else x     (NaN compares false, so NaN propagates as in torch)
  backward  gx = 0 if z <= 0 else gz  (the mask is recomputed from the output)
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def forward(x):
    for i in prange(x.size):
        if x[i] < 0:
            x[i] = 0


@njit(parallel=True, cache=True)
def backward(gz, z, gx):
    for i in prange(z.size):
        gx[i] = 0 if z[i] <= 0 else gz[i]
