// nvcc instantiation of csrc/cuda/pool.cuh for float and double (pyconv._C_cuda).
#include "cuda/pool.cuh"
#include "cuda/instantiate.h"

PYCONV_INSTANTIATE_POOL(float)
PYCONV_INSTANTIATE_POOL(double)
