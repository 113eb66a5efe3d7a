#include "common/host_cache.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyconv {
namespace {

constexpr size_t kGranule = size_t(2) << 20;

struct HostCache {
  std::mutex mu;
  std::unordered_map<void*, size_t> live;  // block -> its size
  std::multimap<size_t, void*> cached;     // size -> free block
  size_t in_use = 0, cached_bytes = 0, limit = size_t(1) << 30;
  int64_t hits = 0, misses = 0;

  // Frees cached blocks, largest first, until at most `keep` bytes stay cached (mu held).
  void trim(size_t keep) {
    while (cached_bytes > keep && !cached.empty()) {
      auto last = std::prev(cached.end());
      cached_bytes -= last->first;
      std::free(last->second);
      cached.erase(last);
    }
  }
};

HostCache& cache() {
  static HostCache* c = new HostCache;  // never destroyed: tensors may be freed during interpreter exit
  return *c;
}

}  // namespace

void* host_cache_alloc(size_t bytes) {
  if (bytes > SIZE_MAX - kGranule) throw std::bad_alloc();
  const size_t size = (bytes + kGranule - 1) / kGranule * kGranule;
  HostCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.cached.lower_bound(size);
    if (it != c.cached.end() && it->first <= size + size / 4) {
      void* p = it->second;
      const size_t got = it->first;
      c.cached.erase(it);
      c.cached_bytes -= got;
      c.live.emplace(p, got);
      c.in_use += got;
      ++c.hits;
      return p;
    }
    ++c.misses;
  }
  void* p = std::aligned_alloc(kGranule, size);
  if (!p) {
    host_cache_empty();  // memory held by the cache may be what is missing
    p = std::aligned_alloc(kGranule, size);
    if (!p) throw std::bad_alloc();
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, size, MADV_HUGEPAGE);  // advisory: fewer faults and TLB misses where THP is on
#endif
  std::lock_guard<std::mutex> lock(c.mu);
  c.live.emplace(p, size);
  c.in_use += size;
  return p;
}

void host_cache_free(void* p) {
  if (!p) return;
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(p);
  if (it == c.live.end()) std::abort();  // not ours: a bug, never silently leaked or double-freed
  const size_t size = it->second;
  c.live.erase(it);
  c.in_use -= size;
  if (size > c.limit) {
    std::free(p);
    return;
  }
  c.cached.emplace(size, p);
  c.cached_bytes += size;
  c.trim(c.limit);
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
  c.trim(0);
}

}  // namespace pyconv
