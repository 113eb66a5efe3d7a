#include "common/host_cache.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace pyconv {
namespace {

// Blocks of 16 MiB and more are 2 MiB-aligned multiples of 2 MiB (whole huge pages, at most 1/8
// wasted); smaller ones multiples of 64 KiB, so rounding adds at most 1/16 to a request (2 MiB
// rounding made ResNet-50's training step peak 155 MiB higher).
constexpr size_t kHuge = size_t(2) << 20, kSmallGranule = size_t(64) << 10;
constexpr size_t kHugeFrom = size_t(16) << 20;
// Each handed-out pointer starts at a different offset (a multiple of 128 bytes below 4 KiB) into
// its 2 MiB block: tensors all at offset 0 would have equal addresses modulo 4 KiB, element for
// element, and a kernel streaming several of them (batch-norm backward reads three and writes one)
// would alias in the L1 sets and in store-to-load forwarding.
constexpr size_t kColorStep = 128, kColors = 32;

struct Block {
  void* base;
  size_t size;
};

struct HostCache {
  std::mutex mu;
  std::unordered_map<void*, Block> live;   // handed-out pointer -> its block
  std::multimap<size_t, void*> cached;     // size -> free block, most recently freed first
  size_t in_use = 0, cached_bytes = 0, limit = size_t(1) << 30;
  size_t small_cached_bytes = 0;  // of cached_bytes, in blocks under kHostCacheKeepBytes
  int64_t hits = 0, misses = 0;
  size_t next_color = 0;

  // The pointer handed out for block b (mu held).
  void* hand_out(void* base, size_t size) {
    void* p = static_cast<char*>(base) + (next_color++ % kColors) * kColorStep;
    live.emplace(p, Block{base, size});
    in_use += size;
    return p;
  }

  // Cached-block bookkeeping, in one place for both byte counts (mu held).
  void list(size_t size, void* base) {
    // first among blocks of its size: lower_bound hands out the most recently freed one, whose lines
    // may still be in cache (the oldest costs a trip to memory per line it writes)
    cached.emplace_hint(cached.lower_bound(size), size, base);
    cached_bytes += size;
    if (size < kHostCacheKeepBytes) small_cached_bytes += size;
  }
  void* unlist(std::multimap<size_t, void*>::iterator it) {
    void* base = it->second;
    cached_bytes -= it->first;
    if (it->first < kHostCacheKeepBytes) small_cached_bytes -= it->first;
    cached.erase(it);
    return base;
  }
  void drop(std::multimap<size_t, void*>::iterator it) { std::free(unlist(it)); }
  // Frees cached blocks, largest first, until at most `keep` bytes stay cached, then small blocks,
  // smallest first, until at most `keep_small` bytes of them stay (mu held).
  void trim(size_t keep, size_t keep_small = kHostCacheSmallKeepBytes) {
    while (cached_bytes > keep && !cached.empty()) drop(std::prev(cached.end()));
    while (small_cached_bytes > keep_small) drop(cached.begin());
  }
};

HostCache* g_cache = nullptr;  // set once, before the fork handlers can run

HostCache* make_cache() {
  g_cache = new HostCache;  // never destroyed: tensors may be freed during interpreter exit
#if defined(__linux__)
  // fork() while another thread holds the lock (a DataLoader worker started mid-call) would leave the
  // child's copy locked forever: the forking thread takes it first and both sides release it.
  pthread_atfork([] { g_cache->mu.lock(); }, [] { g_cache->mu.unlock(); }, [] { g_cache->mu.unlock(); });
#endif
  return g_cache;
}

HostCache& cache() {
  static HostCache* c = make_cache();
  return *c;
}

}  // namespace

void* host_cache_alloc(size_t bytes) {
  if (bytes > SIZE_MAX - 2 * kHuge) throw std::bad_alloc();
  const size_t want = bytes + kColors * kColorStep;
  const size_t granule = want >= kHugeFrom ? kHuge : kSmallGranule;
  const size_t size = (want + granule - 1) / granule * granule;
  HostCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.cached.lower_bound(size);
    if (it != c.cached.end() && it->first <= size + size / 8) {
      const size_t got = it->first;
      ++c.hits;
      return c.hand_out(c.unlist(it), got);
    }
    ++c.misses;
  }
  void* base = std::aligned_alloc(granule, size);
  if (!base) {
    host_cache_empty();  // memory held by the cache may be what is missing
    base = std::aligned_alloc(granule, size);
    if (!base) throw std::bad_alloc();
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(base, size, MADV_HUGEPAGE);  // advisory: fewer faults and TLB misses where THP is on
#endif
  std::lock_guard<std::mutex> lock(c.mu);
  return c.hand_out(base, size);
}

void host_cache_free(void* p) {
  if (!p) return;
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(p);
  if (it == c.live.end()) std::abort();  // not ours: a bug, never silently leaked or double-freed
  const Block b = it->second;
  c.live.erase(it);
  c.in_use -= b.size;
  if (b.size > c.limit) {
    std::free(b.base);
    return;
  }
  c.list(b.size, b.base);
  c.trim(c.limit);  // (past their budget, small blocks go back to malloc smallest first)
}

HostCacheStats host_cache_stats() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return HostCacheStats{c.in_use, c.cached_bytes, c.limit, c.hits, c.misses};
}

void host_cache_set_limit(size_t bytes) {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.limit = bytes;
  c.trim(bytes);
}

void host_cache_empty() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.trim(0, 0);
}

}  // namespace pyconv
