// One kernel source, two compilers. The kernels in csrc/cuda/*.cuh are written against this header:
// under nvcc the macros are CUDA's own keywords and built-ins; under a host compiler (g++) they are
// served by the test-only launch emulator in csrc/cuda_emu (one std::thread per CUDA thread of a
// block, a real barrier for __syncthreads, a per-block buffer for __shared__ arrays). Nothing in a
// kernel may use CUDA outside this header, so what the emulator runs is exactly what the GPU runs.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#define PYCONV_HD __host__ __device__ __forceinline__
#define PYCONV_DEVICE __device__ __forceinline__
#define PYCONV_GLOBAL __global__
#define PYCONV_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
#define PYCONV_UNROLL _Pragma("unroll")
// Static shared memory: `PYCONV_SHARED_ARRAY(float, tile, 512);` declares float tile[512] per block.
#define PYCONV_SHARED_ARRAY(T, name, count) __shared__ T name[count]
#define PYCONV_SYNC() __syncthreads()

namespace pyconv {
namespace kern {
PYCONV_DEVICE unsigned thread_x() { return threadIdx.x; }
PYCONV_DEVICE unsigned block_x() { return blockIdx.x; }
PYCONV_DEVICE unsigned block_y() { return blockIdx.y; }
PYCONV_DEVICE unsigned block_z() { return blockIdx.z; }
PYCONV_DEVICE unsigned block_dim_x() { return blockDim.x; }
PYCONV_DEVICE unsigned grid_dim_x() { return gridDim.x; }
}  // namespace kern
}  // namespace pyconv

#else  // host compiler: the emulator

#include "cuda_emu/emulator.h"

#define PYCONV_HD inline
#define PYCONV_DEVICE inline
#define PYCONV_GLOBAL
#define PYCONV_LAUNCH_BOUNDS(threads)
#define PYCONV_UNROLL
#define PYCONV_SHARED_ARRAY(T, name, count) T* const name = ::pyconv::emu::shared_array<T>(count)
#define PYCONV_SYNC() ::pyconv::emu::syncthreads()

namespace pyconv {
namespace kern {
inline unsigned thread_x() { return emu::ctx().thread.x; }
inline unsigned block_x() { return emu::ctx().block.x; }
inline unsigned block_y() { return emu::ctx().block.y; }
inline unsigned block_z() { return emu::ctx().block.z; }
inline unsigned block_dim_x() { return emu::ctx().block_dim.x; }
inline unsigned grid_dim_x() { return emu::ctx().grid_dim.x; }
}  // namespace kern
}  // namespace pyconv

#endif

namespace pyconv {
namespace kern {
// Grid-stride loops: 64-bit, so N*K*P*Q beyond 2^31 is fine.
PYCONV_DEVICE int64_t global_thread_index() { return int64_t(block_x()) * block_dim_x() + thread_x(); }
PYCONV_DEVICE int64_t global_thread_count() { return int64_t(grid_dim_x()) * block_dim_x(); }
}  // namespace kern
}  // namespace pyconv
