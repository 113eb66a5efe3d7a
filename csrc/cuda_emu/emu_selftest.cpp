// Kernels that test the emulator itself (not pyconv kernels): each one pins down one piece of the
// CUDA execution model the real kernels rely on. Written with the same portability macros and
// launched through the same kern::launch as the real kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "cuda/launch.h"

namespace pyconv {
namespace {

using kern::block_dim_x;
using kern::block_x;
using kern::thread_x;

// out[b*T + t] = in[b*T + (T-1-t)] through shared memory: wrong without a working barrier.
PYCONV_GLOBAL void reverse_kernel(const float* in, float* out) {
  PYCONV_SHARED_ARRAY(float, tile, 1024);
  const int64_t base = int64_t(block_x()) * block_dim_x();
  tile[thread_x()] = in[base + thread_x()];
  PYCONV_SYNC();
  out[base + thread_x()] = tile[block_dim_x() - 1 - thread_x()];
}

// Reads shared memory nobody wrote in this block (the emulator fills it with 0xFF = NaN).
PYCONV_GLOBAL void read_unwritten_shared_kernel(float* out) {
  PYCONV_SHARED_ARRAY(float, tile, 64);
  out[int64_t(block_x()) * block_dim_x() + thread_x()] = tile[thread_x()];
}

// Declares more than 48 KiB of static shared memory: nvcc would refuse it; the emulator raises.
PYCONV_GLOBAL void shared_overflow_kernel(float* out) {
  PYCONV_SHARED_ARRAY(float, big, 13000);
  big[thread_x()] = 1;
  out[0] = big[0];
}

// The upper half of the block exits; the lower half still meets at __syncthreads (sm_70+ semantics).
PYCONV_GLOBAL void early_exit_kernel(int* out) {
  PYCONV_SHARED_ARRAY(int, tile, 1024);
  const unsigned t = thread_x(), half = block_dim_x() / 2;
  if (t >= half) return;
  tile[t] = int(t);
  PYCONV_SYNC();
  out[t] = tile[half - 1 - t];
}

// Built-ins: every thread records (blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x).
PYCONV_GLOBAL void builtins_kernel(int* out) {
  const auto& c = emu::ctx();
  const int64_t b = (int64_t(c.block.z) * c.grid_dim.y + c.block.y) * c.grid_dim.x + c.block.x;
  int* o = out + 4 * (b * c.block_dim.x + c.thread.x);
  o[0] = int(c.block.x), o[1] = int(c.block.y), o[2] = int(c.block.z), o[3] = int(c.thread.x);
}

}  // namespace

void bind_emulator_selftests(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("selftest_reverse", [](unsigned blocks, unsigned threads) {
    std::vector<float> in(size_t(blocks) * threads), out(in.size(), -1.f);
    for (size_t i = 0; i < in.size(); ++i) in[i] = float(i);
    kern::launch(&reverse_kernel, {blocks, 1, 1}, {threads, 1, 1}, nullptr, "reverse", in.data(), out.data());
    return out;
  });
  m.def("selftest_unwritten_shared", [] {
    std::vector<float> out(64, 0.f);
    kern::launch(&read_unwritten_shared_kernel, {1, 1, 1}, {64, 1, 1}, nullptr, "unwritten", out.data());
    return out;
  });
  m.def("selftest_shared_overflow", [] {
    float out = 0;
    kern::launch(&shared_overflow_kernel, {2, 1, 1}, {32, 1, 1}, nullptr, "shared_overflow", &out);
  });
  m.def("selftest_early_exit", [](unsigned threads) {
    std::vector<int> out(threads / 2, -1);
    kern::launch(&early_exit_kernel, {1, 1, 1}, {threads, 1, 1}, nullptr, "early_exit", out.data());
    return out;
  });
  m.def("selftest_builtins", [](unsigned gx, unsigned gy, unsigned gz, unsigned threads) {
    std::vector<int> out(size_t(4) * gx * gy * gz * threads, -1);
    kern::launch(&builtins_kernel, {gx, gy, gz}, {threads, 1, 1}, nullptr, "builtins", out.data());
    return out;
  });
  m.def("selftest_launch", [](unsigned gx, unsigned gy, unsigned gz, unsigned bx) {
    std::vector<int> out(size_t(4) * gx * gy * gz * bx, -1);
    kern::launch(&builtins_kernel, {gx, gy, gz}, {bx, 1, 1}, nullptr, "launch_config", out.data());
  }, "Launches a trivial kernel with the given configuration (tests of the launch limits).");
}

}  // namespace pyconv
