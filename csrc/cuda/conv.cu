// nvcc instantiation of csrc/cuda/conv_igemm.cuh for float and double (pyconv._C_cuda).
#include "cuda/conv_igemm.cuh"
#include "cuda/instantiate.h"

PYCONV_INSTANTIATE_CONV(float)
PYCONV_INSTANTIATE_CONV(double)
