"""numba.cuda kernels (the numba_cuda backend). Written for a real GPU; they also run, slowly, under
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which is how CI checks them."""
