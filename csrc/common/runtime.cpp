#include "common/runtime.h"

#include <omp.h>
#if defined(__linux__)
#include <pthread.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "common/error.h"
#include "common/host_cache.h"

namespace pyconv {

namespace {
std::atomic<int> g_threads{0};
std::atomic<bool> g_debug_fill{false};

#if defined(__linux__)
// OpenMP's thread pool does not survive fork(): a parallel region in a forked child of a process
// that ran one hangs. The child runs the kernels on one thread, as torch's DataLoader workers do.
const int g_fork_rule = pthread_atfork(nullptr, nullptr, [] { g_threads.store(1, std::memory_order_relaxed); });
#endif
}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) {
  PYCONV_CHECK(n >= 1, "set_num_threads: n=", n, " but expected a positive thread count");
  g_threads.store(n, std::memory_order_relaxed);
}

bool debug_fill() { return g_debug_fill.load(std::memory_order_relaxed); }
void set_debug_fill(bool on) { g_debug_fill.store(on, std::memory_order_relaxed); }

size_t checked_bytes(int64_t count, size_t elem_size) {
  PYCONV_CHECK(count >= 0, "negative workspace size ", count);
  if (count != 0 && static_cast<uint64_t>(count) > std::numeric_limits<size_t>::max() / elem_size / 2)
    throw std::bad_alloc();
  return static_cast<size_t>(count) * elem_size;
}

namespace {
size_t workspace_rounded(size_t bytes) { return (bytes + 63) / 64 * 64; }
// Large scratch (Winograd's transformed tiles, GEMM panels of wide layers) comes from the host cache:
// reused pages instead of fresh ones every call. From 256 KiB: glibc maps blocks past its mmap
// threshold (128 KiB at first) fresh on every call, and trims the top of its heap.
constexpr size_t kWorkspaceCacheMinBytes = size_t(256) << 10;
bool workspace_cached(size_t bytes) { return workspace_rounded(bytes) >= kWorkspaceCacheMinBytes; }
}  // namespace

Workspace::Workspace(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const size_t rounded = workspace_rounded(bytes);
  if (workspace_cached(bytes)) {
    ptr_ = host_cache_alloc(rounded);
  } else {
    ptr_ = std::aligned_alloc(64, rounded);
    if (!ptr_) throw std::bad_alloc();
  }
  if (debug_fill()) std::memset(ptr_, 0xA5, rounded);
}

Workspace::~Workspace() {
  if (workspace_cached(bytes_))
    host_cache_free(ptr_);
  else
    std::free(ptr_);
}

}  // namespace pyconv
