// The one way a pyconv kernel is launched: pyconv::kern::launch(kernel, grid, block, stream, name,
// args...). Under nvcc it is kernel<<<grid, block, 0, stream>>> on the caller's stream followed by
// a check of cudaGetLastError (configuration and launch errors become pyconv::Error, hence
// pyconv.PyConvError); under a host compiler it hands the same kernel to the CPU emulator.
// An empty grid launches nothing (CUDA rejects it; a zero-size problem is not an error).
#pragma once
#include <cstdint>

#include "common/error.h"
#include "cuda/cuda_compat.h"

namespace pyconv {
namespace kern {

using stream_t = void*;  // cudaStream_t under nvcc; unused by the emulator

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// Grid sizes are computed in 64 bits and checked here, never truncated silently.
inline unsigned grid_dim(int64_t blocks, int64_t limit, const char* name) {
  if (blocks > limit) fail("kernel ", name, ": grid dimension ", blocks, " exceeds the CUDA limit ", limit);
  return unsigned(blocks);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#if defined(__CUDACC__)

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), Dim3 grid, Dim3 block, stream_t stream, const char* name,
            Args... args) {
  if (uint64_t(grid.x) * grid.y * grid.z == 0) return;
  kernel<<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), 0,
           static_cast<cudaStream_t>(stream)>>>(static_cast<KArgs>(args)...);
  check_cuda(cudaGetLastError(), name);
}

#else

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), Dim3 grid, Dim3 block, stream_t, const char* name, Args... args) {
  if (uint64_t(grid.x) * grid.y * grid.z == 0) return;
  emu::launch({grid.x, grid.y, grid.z}, {block.x, block.y, block.z}, name,
              [&] { kernel(static_cast<KArgs>(args)...); });
}

#endif

}  // namespace kern
}  // namespace pyconv
