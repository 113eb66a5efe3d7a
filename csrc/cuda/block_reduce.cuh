// Deterministic two-level block reduction: each thread first sums its strided share serially, then
// the block folds the per-thread partials in shared memory along a fixed binary tree. No atomics and
// no warp shuffles, so the result is bitwise reproducible run to run and identical in the emulator.
#pragma once
#include "cuda/cuda_compat.h"

namespace pyconv {
namespace kern {

constexpr int kReduceThreads = 256;

// `scratch` is a kReduceThreads-element shared array declared by the calling kernel. Every thread
// of the block must call this; all get the sum. The trailing sync lets the caller reuse scratch.
template <typename A>
PYCONV_DEVICE A block_sum(A v, A* scratch) {
  const unsigned t = thread_x();
  scratch[t] = v;
  PYCONV_SYNC();
  for (unsigned half = kReduceThreads / 2; half > 0; half >>= 1) {
    if (t < half) scratch[t] += scratch[t + half];
    PYCONV_SYNC();
  }
  const A total = scratch[0];
  PYCONV_SYNC();
  return total;
}

}  // namespace kern
}  // namespace pyconv
