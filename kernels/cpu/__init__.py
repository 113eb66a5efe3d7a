"""Numba CPU kernels (@njit(parallel=True))."""
