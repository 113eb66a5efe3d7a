// nvcc instantiation of csrc/cuda/relu.cuh for float and double (pyconv._C_cuda).
#include "cuda/instantiate.h"
#include "cuda/relu.cuh"

PYCONV_INSTANTIATE_RELU(float)
PYCONV_INSTANTIATE_RELU(double)
