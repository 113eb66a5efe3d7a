// g++ instantiation of the unchanged kernel sources of csrc/cuda for the launch emulator
// (pyconv._C_cuda_emu): cuda_compat.h maps the CUDA built-ins onto csrc/cuda_emu/emulator.h.
#if defined(__CUDACC__)
#error "the emulator build is compiled by the host compiler"
#endif
#include "cuda/batch_norm.cuh"
#include "cuda/conv_igemm.cuh"
#include "cuda/conv_winograd.cuh"
#include "cuda/instantiate.h"
#include "cuda/pool.cuh"
#include "cuda/relu.cuh"

PYCONV_INSTANTIATE_CONV(float)
PYCONV_INSTANTIATE_CONV(double)
PYCONV_INSTANTIATE_POOL(float)
PYCONV_INSTANTIATE_POOL(double)
PYCONV_INSTANTIATE_BATCH_NORM(float)
PYCONV_INSTANTIATE_BATCH_NORM(double)
PYCONV_INSTANTIATE_RELU(float)
PYCONV_INSTANTIATE_RELU(double)
PYCONV_INSTANTIATE_CONV_STATS(float)
PYCONV_INSTANTIATE_CONV_STATS(double)
PYCONV_INSTANTIATE_CONV_WINOGRAD(float)
PYCONV_INSTANTIATE_CONV_WINOGRAD(double)
