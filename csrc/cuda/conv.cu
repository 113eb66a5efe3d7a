// nvcc instantiation of csrc/cuda/conv_igemm.cuh and conv_winograd.cuh for float and double (pyconv._C_cuda).
#include "cuda/conv_igemm.cuh"
#include "cuda/conv_winograd.cuh"
#include "cuda/instantiate.h"

PYCONV_INSTANTIATE_CONV(float)
PYCONV_INSTANTIATE_CONV(double)

// conv-BN fusion: fprop with per-channel output statistics.
PYCONV_INSTANTIATE_CONV_STATS(float)
PYCONV_INSTANTIATE_CONV_STATS(double)
PYCONV_INSTANTIATE_CONV_WINOGRAD(float)
PYCONV_INSTANTIATE_CONV_WINOGRAD(double)
