"""pyconv.kernels: the Numba kernels (cpu: @njit, cuda: numba.cuda). Installed from kernels/."""
