// nvcc instantiation of csrc/cuda/batch_norm.cuh for float and double (pyconv._C_cuda).
#include "cuda/batch_norm.cuh"
#include "cuda/instantiate.h"

PYCONV_INSTANTIATE_BATCH_NORM(float)
PYCONV_INSTANTIATE_BATCH_NORM(double)
