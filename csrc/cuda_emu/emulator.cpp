// The CUDA launch emulator (see emulator.h). Threads of a block meet at a generation-counting
// barrier built on a mutex and a condition variable: with hundreds of threads on two cores, spinning
// would starve the threads that still have to arrive.
#include "cuda_emu/emulator.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"

namespace pyconv {
namespace emu {

namespace {

struct Aborted {};  // unwinds the threads of a block after one of them failed

thread_local ThreadContext* tls_ctx = nullptr;

std::atomic<int64_t> g_launches{0}, g_blocks{0}, g_syncs{0};

}  // namespace

class Barrier {
 public:
  explicit Barrier(unsigned n) : expected_(n) {}

  // __syncthreads: waits for every thread of the block that has not exited.
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (aborted_) throw Aborted{};
    const uint64_t gen = generation_;
    if (++arrived_ == expected_) {
      release_locked();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    if (aborted_) throw Aborted{};
  }

  // A thread that returned from the kernel no longer takes part in this block's barriers.
  void drop() {
    std::lock_guard<std::mutex> lock(mu_);
    --expected_;
    if (expected_ > 0 && arrived_ == expected_) release_locked();
  }

  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

  void reset(unsigned n) {
    std::lock_guard<std::mutex> lock(mu_);
    expected_ = n;
    arrived_ = 0;
  }

  bool aborted() {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_;
  }

 private:
  void release_locked() {
    arrived_ = 0;
    ++generation_;
    g_syncs.fetch_add(1, std::memory_order_relaxed);
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  unsigned expected_, arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

ThreadContext& ctx() {
  if (!tls_ctx) fail("CUDA emulator: a kernel built-in was used outside a launch");
  return *tls_ctx;
}

void* shared_alloc(size_t bytes, size_t align) {
  ThreadContext& c = ctx();
  const size_t off = (c.shared_used + align - 1) / align * align;
  if (off + bytes > kSharedBytes)
    fail("CUDA emulator: kernel declares ", off + bytes, " bytes of __shared__ memory; the limit is ",
         kSharedBytes);
  c.shared_used = off + bytes;
  return c.shared + off;
}

void syncthreads() { ctx().barrier->arrive_and_wait(); }

Stats stats() { return {g_launches.load(), g_blocks.load(), g_syncs.load()}; }

void launch(Dim3 grid, Dim3 block, const char* name, const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  // The limits cudaLaunchKernel enforces (compute capability 8.x / 9.x).
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    fail("CUDA error in ", name, ": invalid configuration argument (grid ", grid.x, "x", grid.y, "x", grid.z,
         ", block ", block.x, "x", block.y, "x", block.z, ")");
  g_launches.fetch_add(1, std::memory_order_relaxed);
  const unsigned n = unsigned(nthreads);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;

  std::vector<unsigned char> shared(kSharedBytes);
  Barrier kernel_barrier(n);  // __syncthreads inside the kernel
  Barrier block_end(n);       // every thread finished block b before block b+1 starts
  std::mutex err_mu;
  std::string error;

  auto worker = [&](unsigned t) {
    ThreadContext c;
    c.thread = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    c.block_dim = block;
    c.grid_dim = grid;
    c.shared = shared.data();
    c.barrier = &kernel_barrier;
    tls_ctx = &c;
    for (uint64_t b = 0; b < nblocks; ++b) {
      if (t == 0) {
        std::memset(shared.data(), 0xFF, shared.size());  // uninitialized shared memory reads as NaN
        kernel_barrier.reset(n);
        g_blocks.fetch_add(1, std::memory_order_relaxed);
      }
      try {
        block_end.arrive_and_wait();  // thread 0 prepared the block
      } catch (const Aborted&) {
        break;
      }
      c.block = {unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      c.shared_used = 0;
      bool ok = true;
      try {
        body();
      } catch (const Aborted&) {
        ok = false;
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(err_mu);
        if (error.empty()) error = e.what();
        ok = false;
      }
      if (!ok) {
        kernel_barrier.abort();
        block_end.abort();
        break;
      }
      kernel_barrier.drop();
      try {
        block_end.arrive_and_wait();  // nobody still reads this block's shared memory
      } catch (const Aborted&) {
        break;
      }
    }
    tls_ctx = nullptr;
  };

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  if (!error.empty()) fail("CUDA emulator: kernel ", name, " failed: ", error);
  if (kernel_barrier.aborted()) fail("CUDA emulator: kernel ", name, " aborted");
}

}  // namespace emu
}  // namespace pyconv
