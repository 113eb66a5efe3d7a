// A caching allocator for large host buffers: kernel outputs handed to torch (pyconv.memory) and
// kernel workspaces. A fresh buffer of tens of MB costs a page fault per 4 KiB page on first touch
// (a 38 MB MobileNetV2 activation: 9.6 ms to fill fresh against 0.5 ms reused, more than the layer's
// kernel), and glibc returns blocks past 32 MB to the system on every free. Freed blocks are kept
// here and handed out again to requests of about their size (best fit within +1/8), so a network
// run in a loop touches the same pages every step. Blocks of 16 MiB and more are 2 MiB-aligned
// multiples of 2 MiB, smaller ones multiples of 64 KiB; all are advised as transparent huge pages.
// Cached (freed, unused) bytes stay under a limit; past it the largest cached blocks go back to the
// system. Of freed blocks under kHostCacheKeepBytes only kHostCacheSmallKeepBytes are kept, the
// smallest going back first.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pyconv {

// Requests of at least this many bytes go through the cache; smaller ones are better served by malloc.
constexpr size_t kHostCacheMinBytes = size_t(1) << 20;
// Freed blocks of at least this many bytes are kept for reuse; smaller ones go back to malloc, which
// reuses them too but splits and merges them across sizes. A cache that kept every size held the
// blocks of sizes one phase of a training step never asks for (backward-only workspaces through the
// forward) beside those it does: ResNet-18's step peaked 880 MiB (torch 837), ResNet-50's 1684 (torch
// 1594); keeping 8 MiB and up: 834 and 1487, at the same speed. The large blocks are the ones whose
// fresh pages cost the most (a 2 MiB huge page is zeroed on first touch) and that glibc unmaps on
// every free.
constexpr size_t kHostCacheKeepBytes = size_t(8) << 20;
// Smaller freed blocks are kept too, up to this many bytes of them (the smallest go first past it):
// kernel workspaces of 1-8 MiB, freed to malloc, came back as fresh pages on many calls (glibc trims
// the top of its heap), and on a virtual machine a fault costs more than the kernel's own work on a
// small layer (F(4x4)'s grad-weight on CIFAR's 64-channel 8x8 layer: a quarter of its time). A miss
// costs a fault per page it touches, so the largest blocks are the ones worth keeping: dropping
// the largest first, MobileNetV2's 3-6 MiB activations at batch 8 missed every call (13 misses,
// ~20% of an inference in the kernel's page clearing; dropping the smallest first, 59-62 ms against
// 78-98), while malloc's heap serves the 1-2 MiB blocks without faults.
constexpr size_t kHostCacheSmallKeepBytes = size_t(24) << 20;

// At least `bytes`, 128-byte aligned; throws std::bad_alloc.
void* host_cache_alloc(size_t bytes);
// Returns a block from host_cache_alloc to the cache.
void host_cache_free(void* p);

struct HostCacheStats {
  size_t in_use_bytes, cached_bytes, limit_bytes;
  int64_t hits, misses;
};
HostCacheStats host_cache_stats();
// Cached bytes kept at most (0: nothing is kept; every free goes back to the system).
void host_cache_set_limit(size_t bytes);
// Every cached block back to the system.
void host_cache_empty();

}  // namespace pyconv
