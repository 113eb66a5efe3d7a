// Test-only CPU emulator of the CUDA execution model, for the unchanged kernels of csrc/cuda.
//
// A launch of grid x block runs the blocks one after another; each block is executed by
// block.x*block.y*block.z std::threads (one per CUDA thread, created once per launch and reused for
// every block). __syncthreads is a real barrier over the threads of the block that have not exited
// (as on Volta and later); __shared__ arrays are carved, in declaration order, from one per-block
// buffer that is refilled with 0xFF bytes (NaN) before every block, so a read of shared memory that
// no thread of this block wrote shows up as NaN. blockIdx/threadIdx/blockDim/gridDim are per-thread.
// A launch with an invalid configuration fails like cudaErrorInvalidConfiguration does.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace pyconv {
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

class Barrier;

struct ThreadContext {
  Dim3 thread, block, block_dim, grid_dim;
  unsigned char* shared = nullptr;  // this block's shared memory
  size_t shared_used = 0;           // bytes handed out to this thread's declarations so far
  Barrier* barrier = nullptr;
};

ThreadContext& ctx();

constexpr size_t kSharedBytes = 48 * 1024;  // the static __shared__ limit of one block

void* shared_alloc(size_t bytes, size_t align);

template <typename T>
T* shared_array(size_t count) {
  return static_cast<T*>(shared_alloc(count * sizeof(T), alignof(T)));
}

void syncthreads();

// Runs body once per thread of every block; throws pyconv::Error on an invalid configuration or
// when a thread of the kernel threw.
void launch(Dim3 grid, Dim3 block, const char* name, const std::function<void()>& body);

// Counters for the tests: how many kernel launches and barrier crossings the emulator ran.
struct Stats {
  int64_t launches = 0, blocks = 0, syncs = 0;
};
Stats stats();

}  // namespace emu
}  // namespace pyconv
