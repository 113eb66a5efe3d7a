// The GEMM engine shared by gemm.cpp, conv_im2col.cpp and (later) winograd: Goto / BLIS loops
//
//   for pc in K step KC:                      pack A[0:M, pc:pc+KC] into MR-row panels (shared)
//     parallel for each (N chunk, M range):   pack B[pc:pc+KC, chunk] into NR-column panels (per thread)
//       for ic in M range step MC:            A block MC x KC stays in L2
//         for jr in chunk step NR:            B micro-panel KC x NR stays in L1
//           for ir in MC step MR:             MR x NR accumulators in registers
//             C tile (+)= A panel . B panel
//
// Operands are never read directly: a PackA functor writes one MR panel, a PackB functor one NR
// panel, both zero-padded past the matrix edge, so edge tiles never read out of bounds and the
// micro-kernel always runs full tiles. The caller's packers may build their panels from anything
// (a strided matrix, a virtual im2col matrix, images laid out batch by batch). An Out functor
// stores each finished tile (alpha, beta, bias, scattered column layouts).
//
// Include only from csrc/cpu kernel sources (compiled per ISA).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <omp.h>

#include "common/runtime.h"
#include "cpu/epilogue.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

namespace pyconv {
namespace PYCONV_ISA {

// Register tile MR x NR (NR = 2 vectors: 6x16 for float, 6x8 for double: 12 accumulators, 2 B
// vectors and 1 broadcast of the 16 ymm registers) and cache blocks (B micro-panel KC*NR <= 20 KiB in
// L1, A block MC*KC ~ 144 KiB in L2, B block KC*NC per thread in L3).
template <typename T>
struct GemmBlocking {
  static constexpr int MR = 6;
  static constexpr int NR = 2 * Simd<T>::W;
  static constexpr int64_t KC = 320;  // the most; gemm_kc() splits K into equal blocks up to this
  static constexpr int64_t MC = sizeof(T) == 4 ? 144 : 72;
  static constexpr int64_t NC = sizeof(T) == 4 ? 2048 : 1024;
};

// x - 0 == x for every x (unlike 0 + x at x = -0), so this folds into one vbroadcast from memory.
template <typename T>
PYCONV_INLINE vec_t<T> gemm_splat(T x) {
  return x - vec_t<T>{};
}

// tile[MR][NR] = a_panel[kc][MR] . b_panel[kc][NR], portable version (vector extensions).
template <typename T>
PYCONV_INLINE void gemm_micro_kernel_portable(int64_t kc, const T* __restrict a, const T* __restrict b,
                                     T* __restrict tile) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{}, c40{}, c41{}, c50{}, c51{};
#define PYCONV_GEMM_STEP(kk)                                  \
  {                                                           \
    const V b0 = vload(b + (kk) * NR), b1 = vload(b + (kk) * NR + W); \
    const T* ak = a + (kk) * MR;                              \
    V av = gemm_splat(ak[0]); c00 += av * b0; c01 += av * b1; \
    av = gemm_splat(ak[1]); c10 += av * b0; c11 += av * b1;   \
    av = gemm_splat(ak[2]); c20 += av * b0; c21 += av * b1;   \
    av = gemm_splat(ak[3]); c30 += av * b0; c31 += av * b1;   \
    av = gemm_splat(ak[4]); c40 += av * b0; c41 += av * b1;   \
    av = gemm_splat(ak[5]); c50 += av * b0; c51 += av * b1;   \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    __builtin_prefetch(b + 8 * NR);
    PYCONV_GEMM_STEP(0) PYCONV_GEMM_STEP(1) PYCONV_GEMM_STEP(2) PYCONV_GEMM_STEP(3)
    a += 4 * MR;
    b += 4 * NR;
  }
  for (; k < kc; ++k) {
    PYCONV_GEMM_STEP(0)
    a += MR;
    b += NR;
  }
#undef PYCONV_GEMM_STEP
  vstore(tile + 0 * NR, c00), vstore(tile + 0 * NR + W, c01);
  vstore(tile + 1 * NR, c10), vstore(tile + 1 * NR + W, c11);
  vstore(tile + 2 * NR, c20), vstore(tile + 2 * NR + W, c21);
  vstore(tile + 3 * NR, c30), vstore(tile + 3 * NR + W, c31);
  vstore(tile + 4 * NR, c40), vstore(tile + 4 * NR + W, c41);
  vstore(tile + 5 * NR, c50), vstore(tile + 5 * NR + W, c51);
}

#if defined(PYCONV_SIMD_AVX2) || defined(PYCONV_SIMD_AVX512)
// AVX2 + FMA and AVX-512: the same kernel written in assembly, one text for both, on ymm or zmm
// registers (PYCONV_VR, PYCONV_VB bytes each; 6x16 / 6x8 tiles on AVX2, 6x32 / 6x16 on AVX-512).
// GCC's register allocation of the vector-extension version spilled accumulators on AVX2 (about 20%
// slower) and copied registers inside the loop on AVX-512 (195 GFLOP/s on 2 cores); here registers
// 0-11 hold the 6x2 accumulators, 12-13 the B row, 14 the broadcast A element. One step: 2 loads, 6
// broadcasts, 12 FMAs; the loop runs 4 steps per iteration and prefetches B 8 rows ahead.
#if defined(PYCONV_SIMD_AVX512)
#define PYCONV_VR "zmm"
#define PYCONV_VB "64"
#else
#define PYCONV_VR "ymm"
#define PYCONV_VB "32"
#endif
// The 12 accumulators (an MR x NR tile, rows NR wide) from / to the tile at %[t], or zeroed; the GEMM
// micro-kernel zeroes and stores them, the AVX2 blocked direct kernel (conv_blocked.cpp) all three.
#define PYCONV_ASM_TILE_MOV(j) "vmovups " #j "*" PYCONV_VB "(%[t]), %%" PYCONV_VR #j "\n\t"
#define PYCONV_ASM_TILE_PUT(j) "vmovups %%" PYCONV_VR #j ", " #j "*" PYCONV_VB "(%[t])\n\t"
#define PYCONV_ASM_TILE_LOAD                                                                    \
  PYCONV_ASM_TILE_MOV(0) PYCONV_ASM_TILE_MOV(1) PYCONV_ASM_TILE_MOV(2) PYCONV_ASM_TILE_MOV(3)    \
  PYCONV_ASM_TILE_MOV(4) PYCONV_ASM_TILE_MOV(5) PYCONV_ASM_TILE_MOV(6) PYCONV_ASM_TILE_MOV(7)    \
  PYCONV_ASM_TILE_MOV(8) PYCONV_ASM_TILE_MOV(9) PYCONV_ASM_TILE_MOV(10) PYCONV_ASM_TILE_MOV(11)
#define PYCONV_ASM_TILE_STORE                                                                   \
  PYCONV_ASM_TILE_PUT(0) PYCONV_ASM_TILE_PUT(1) PYCONV_ASM_TILE_PUT(2) PYCONV_ASM_TILE_PUT(3)    \
  PYCONV_ASM_TILE_PUT(4) PYCONV_ASM_TILE_PUT(5) PYCONV_ASM_TILE_PUT(6) PYCONV_ASM_TILE_PUT(7)    \
  PYCONV_ASM_TILE_PUT(8) PYCONV_ASM_TILE_PUT(9) PYCONV_ASM_TILE_PUT(10) PYCONV_ASM_TILE_PUT(11)
#define PYCONV_ASM_ZERO(j) "vxorps %%" PYCONV_VR #j ", %%" PYCONV_VR #j ", %%" PYCONV_VR #j "\n\t"
#define PYCONV_ASM_TILE_ZERO                                                                   \
  PYCONV_ASM_ZERO(0) PYCONV_ASM_ZERO(1) PYCONV_ASM_ZERO(2) PYCONV_ASM_ZERO(3) PYCONV_ASM_ZERO(4) \
  PYCONV_ASM_ZERO(5) PYCONV_ASM_ZERO(6) PYCONV_ASM_ZERO(7) PYCONV_ASM_ZERO(8) PYCONV_ASM_ZERO(9) \
  PYCONV_ASM_ZERO(10) PYCONV_ASM_ZERO(11)
#define PYCONV_GEMM_ROW(aoff, off, acc0, acc1)                                              \
  "vbroadcast" PYCONV_SFX " " aoff "+" off "(%[a]), %%" PYCONV_VR "14\n\t"                 \
  "vfmadd231p" PYCONV_P " %%" PYCONV_VR "12, %%" PYCONV_VR "14, %%" PYCONV_VR acc0 "\n\t"  \
  "vfmadd231p" PYCONV_P " %%" PYCONV_VR "13, %%" PYCONV_VR "14, %%" PYCONV_VR acc1 "\n\t"
// Step i of an iteration, at A byte offset i*ASTEP and B byte offset i * 2 vectors.
#define PYCONV_GEMM_STEP_ASM(i, ASTEP, O1, O2, O3, O4, O5)                                  \
  "prefetcht0 16*" PYCONV_VB "+" #i "*2*" PYCONV_VB "(%[b])\n\t"                             \
  "vmovups " #i "*2*" PYCONV_VB "(%[b]), %%" PYCONV_VR "12\n\t"                             \
  "vmovups " #i "*2*" PYCONV_VB "+" PYCONV_VB "(%[b]), %%" PYCONV_VR "13\n\t"                 \
  PYCONV_GEMM_ROW(#i "*" ASTEP, "0", "0", "1") PYCONV_GEMM_ROW(#i "*" ASTEP, O1, "2", "3")  \
  PYCONV_GEMM_ROW(#i "*" ASTEP, O2, "4", "5") PYCONV_GEMM_ROW(#i "*" ASTEP, O3, "6", "7")   \
  PYCONV_GEMM_ROW(#i "*" ASTEP, O4, "8", "9") PYCONV_GEMM_ROW(#i "*" ASTEP, O5, "10", "11")
#define PYCONV_GEMM_ASM_KERNEL(T, O1, O2, O3, O4, O5, ASTEP)                                       \
  PYCONV_INLINE void gemm_micro_kernel_asm(int64_t kc, const T* a, const T* b, T* tile) {           \
    __asm__ volatile(                                                                               \
        PYCONV_ASM_TILE_ZERO                                                                        \
        "cmp $4, %[k]\n\t"                                                                          \
        "jl 3f\n\t"                                                                                 \
        ".p2align 4\n"                                                                              \
        "1:\n\t"                                                                                    \
        PYCONV_GEMM_STEP_ASM(0, ASTEP, O1, O2, O3, O4, O5)                                          \
        PYCONV_GEMM_STEP_ASM(1, ASTEP, O1, O2, O3, O4, O5)                                          \
        PYCONV_GEMM_STEP_ASM(2, ASTEP, O1, O2, O3, O4, O5)                                          \
        PYCONV_GEMM_STEP_ASM(3, ASTEP, O1, O2, O3, O4, O5)                                          \
        "add $4*" ASTEP ", %[a]\n\t"                                                                \
        "add $4*2*" PYCONV_VB ", %[b]\n\t"                                                          \
        "sub $4, %[k]\n\t"                                                                          \
        "cmp $4, %[k]\n\t"                                                                          \
        "jge 1b\n"                                                                                  \
        "3:\n\t"                                                                                    \
        "test %[k], %[k]\n\t"                                                                       \
        "jle 2f\n"                                                                                  \
        "4:\n\t"                                                                                    \
        PYCONV_GEMM_STEP_ASM(0, ASTEP, O1, O2, O3, O4, O5)                                          \
        "add $" ASTEP ", %[a]\n\t"                                                                  \
        "add $2*" PYCONV_VB ", %[b]\n\t"                                                            \
        "dec %[k]\n\t"                                                                              \
        "jnz 4b\n"                                                                                  \
        "2:\n\t"                                                                                    \
        PYCONV_ASM_TILE_STORE                                                                       \
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(kc)                                                   \
        : [t] "r"(tile)                                                                             \
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
          "xmm11", "xmm12", "xmm13", "xmm14", "memory", "cc");                                     \
  }
#define PYCONV_SFX "ss"
#define PYCONV_P "s"
PYCONV_GEMM_ASM_KERNEL(float, "4", "8", "12", "16", "20", "24")
#undef PYCONV_SFX
#undef PYCONV_P
#define PYCONV_SFX "sd"
#define PYCONV_P "d"
PYCONV_GEMM_ASM_KERNEL(double, "8", "16", "24", "32", "40", "48")
#undef PYCONV_SFX
#undef PYCONV_P
#undef PYCONV_GEMM_ASM_KERNEL
#undef PYCONV_GEMM_STEP_ASM
#undef PYCONV_GEMM_ROW
static_assert(GemmBlocking<float>::NR == 2 * Simd<float>::W && GemmBlocking<double>::NR == 2 * Simd<double>::W,
              "the assembly micro-kernel's B row is 2 vectors");

template <typename T>
PYCONV_INLINE void gemm_micro_kernel(int64_t kc, const T* a, const T* b, T* tile) {
  gemm_micro_kernel_asm(kc, a, b, tile);
}
#else
template <typename T>
PYCONV_INLINE void gemm_micro_kernel(int64_t kc, const T* a, const T* b, T* tile) {
  gemm_micro_kernel_portable(kc, a, b, tile);
}
#endif

// ---------------------------------------------------------------------------------- packers ---

// dst[k][MR] <- the MR rows src + i*rs, k in [0, len): W columns at a time, transposed in registers
// (element by element, this pack was ~9% of a training forward's GEMM on 512-channel layers; on a
// 1x1 grad-weight's A, gy, it measured no faster). Returns the columns done (a multiple of W); the
// caller packs the rest.
template <typename T>
PYCONV_INLINE int64_t gemm_pack_full_rows(const T* src, int64_t rs, int64_t len, T* dst) {
  constexpr int MR = GemmBlocking<T>::MR, W = Simd<T>::W;
  int64_t k = 0;
  if constexpr (MR <= W)
    for (; k + W <= len; k += W) {
      vec_t<T> r[W];
      for (int i = 0; i < W; ++i) r[i] = i < MR ? vload(src + i * rs + k) : vec_t<T>{};
      vtranspose(r);
      for (int u = 0; u < W; ++u) vstore_first<MR, T>(dst + (k + u) * MR, r[u]);
    }
  return k;
}

// Element (i, k) of A at a[i*rs + k*cs]: packs rows [i0, i0+mr) x cols [k0, k0+kc) as dst[k][MR].
template <typename T>
struct StridedPackA {
  const T* a;
  int64_t rs, cs;
  void operator()(int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) const {
    constexpr int MR = GemmBlocking<T>::MR;
    if (mr < MR)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = mr; i < MR; ++i) dst[k * MR + i] = T(0);
    if (cs == 1) {
      const int64_t k = mr == MR ? gemm_pack_full_rows<T>(a + i0 * rs + k0, rs, kc, dst) : 0;
      for (int64_t i = 0; i < mr; ++i) {
        const T* row = a + (i0 + i) * rs + k0;
        for (int64_t kk = k; kk < kc; ++kk) dst[kk * MR + i] = row[kk];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* col = a + (k0 + k) * cs + i0 * rs;
        for (int64_t i = 0; i < mr; ++i) dst[k * MR + i] = col[i * rs];
      }
    }
  }
};

// Element (k, j) of B at b[k*rs + j*cs]: packs rows [k0, k0+kc) x cols [j0, j0+nr) as dst[k][NR].
template <typename T>
struct StridedPackB {
  const T* b;
  int64_t rs, cs;
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    for (int64_t k = 0; k < kc; ++k) {
      T* d = dst + k * NR;
      const T* src = b + (k0 + k) * rs + j0 * cs;
      if (cs == 1 && nr == NR) {
        for (int j = 0; j < NR; ++j) d[j] = src[j];
        continue;
      }
      for (int64_t j = 0; j < nr; ++j) d[j] = src[j * cs];
      for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
    }
  }
};

// Cache level 1 (prefetcht0) or 2 (prefetcht1). An asm statement: GCC treats a prefetch builtin as
// free of side effects and deletes a loop that does nothing else (or folds it into one prefetch).
template <int Level>
PYCONV_INLINE void prefetch_line(const void* p) {
  static_assert(Level == 1 || Level == 2, "prefetch into L1 or L2");
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (Level == 1)
    asm volatile("prefetcht0 %0" ::"m"(*static_cast<const char*>(p)));
  else
    asm volatile("prefetcht1 %0" ::"m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 4 - Level);
#endif
}

// Every line of p[0:len].
template <int Level, typename T>
PYCONV_INLINE void prefetch_run(const T* p, int64_t len) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t e = 0; e < len; e += line) prefetch_line<Level>(p + e);
  if (len > 0) prefetch_line<Level>(p + len - 1);
}

// A matrix stored image by image: element (row, n*L + l) at base[n*img + row*ld + l]. The activations
// of a convolution seen as [channels, N*P*Q] (1x1 inputs, grad-outputs).
template <typename T>
struct BatchedColumns {
  const T* base;
  int64_t img, ld, L;
  // fn(c, src, len) for each run of columns [c, c+len) of [c0, c0+count) inside one image; src is row
  // 0's element of column c (row r at src + r*ld).
  template <class Fn>
  PYCONV_INLINE void for_each_run(int64_t c0, int64_t count, Fn&& fn) const {
    for (int64_t c = c0; c < c0 + count;) {
      const int64_t n = c / L, l = c % L, len = imin(L - l, c0 + count - c);
      fn(c, base + n * img + l, len);
      c += len;
    }
  }
};

// BatchedColumns as the B operand (k = row, j = column).
template <typename T>
struct BatchedPackB {
  BatchedColumns<T> m;
  // A chunk of panels row by row: each matrix row's run of columns is read front to back (a 1x1
  // layer's channel planes stream in order), not 16 columns of every row per panel (rows a plane
  // apart: that read was ~19% of a 1024 -> 256 1x1 layer at batch 8). false: too many runs (tiny
  // planes), pack panel by panel.
  static constexpr int kMaxRuns = 64;
  static constexpr int64_t kPrefetchRows = 16;
  void source_prefetch(int64_t j0, int64_t nr, int64_t k0, int64_t kc) const {
    m.for_each_run(j0, nr, [&](int64_t, const T* col, int64_t len) {
      for (int64_t k = k0; k < k0 + kc; ++k) prefetch_run<2>(col + k * m.ld, len);
    });
  }
  bool chunk(int64_t k0, int64_t kc, int64_t j0, int64_t ncur, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    struct Run {
      const T* src;
      int64_t jj, len;
    } runs[kMaxRuns];
    int nruns = 0;
    for (int64_t j = j0; j < j0 + ncur;) {
      if (nruns == kMaxRuns) return false;
      const int64_t n = j / m.L, l = j % m.L, len = imin(m.L - l, j0 + ncur - j);
      runs[nruns++] = {m.base + n * m.img + k0 * m.ld + l, j - j0, len};
      j += len;
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int i = 0; i < nruns; ++i) {
        const T* src = runs[i].src + k * m.ld;
        for (int64_t t = 0, jj = runs[i].jj; t < runs[i].len;) {
          const int64_t lane = jj % NR, seg = imin(NR - lane, runs[i].len - t);
          T* d = dst + (jj / NR) * NR * kc + k * NR + lane;
          for (int64_t e = 0; e < seg; ++e) d[e] = src[t + e];
          t += seg, jj += seg;
        }
      }
    const int64_t tail = ncur % NR;  // the last panel's lanes past the matrix
    if (tail)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t e = tail; e < NR; ++e) dst[(ncur / NR) * NR * kc + k * NR + e] = T(0);
    return true;
  }
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    m.for_each_run(j0, nr, [&](int64_t j, const T* col, int64_t len) {
      const T* src = col + k0 * m.ld;
      T* d = dst + (j - j0);
      for (int64_t k = 0; k < kc; ++k) {
        __builtin_prefetch(src + (k + kPrefetchRows) * m.ld);
        for (int64_t t = 0; t < len; ++t) d[k * NR + t] = src[k * m.ld + t];
      }
    });
    if (nr < NR)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
  }
};

// B panels [j0, j0+ncur) of one K block, packed side by side (panel jp at dst + jp*NR*kc): the
// packer's own chunk(), where it has one, else panel by panel.
template <class PackB, class = void>
struct HasChunkPacker : std::false_type {};
template <class PackB>
struct HasChunkPacker<PackB, std::void_t<decltype(&PackB::chunk)>> : std::true_type {};

template <typename T, class PackB>
PYCONV_INLINE void gemm_pack_b_chunk(const PackB& pack_b, int64_t k0, int64_t kc, int64_t j0, int64_t ncur, T* dst) {
  constexpr int NR = GemmBlocking<T>::NR;
  if constexpr (HasChunkPacker<PackB>::value) {
    if (pack_b.chunk(k0, kc, j0, ncur, dst)) return;
  }
  for (int64_t jp = 0; jp < ceil_div(ncur, NR); ++jp)
    pack_b(k0, kc, j0 + jp * NR, imin(NR, ncur - jp * NR), dst + jp * NR * kc);
}

// Packers that can name the memory a panel reads: source_prefetch(e0, n, k0, kc) hints rows (A) or
// columns (B) [e0, e0+n) of K block [k0, k0+kc) into L2, so the split-K schedule (below) can fetch
// its next block while it multiplies this one.
template <class Pack, class = void>
struct HasSourcePrefetch : std::false_type {};
template <class Pack>
struct HasSourcePrefetch<Pack, std::void_t<decltype(&Pack::source_prefetch)>> : std::true_type {};

// BatchedColumns as the A operand (i = row, k = column).
template <typename T>
struct BatchedPackA {
  BatchedColumns<T> m;
  void source_prefetch(int64_t i0, int64_t mr, int64_t k0, int64_t kc) const {
    m.for_each_run(k0, kc, [&](int64_t, const T* col, int64_t len) {
      for (int64_t i = 0; i < mr; ++i) prefetch_run<2>(col + (i0 + i) * m.ld, len);
    });
  }
  void operator()(int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) const {
    constexpr int MR = GemmBlocking<T>::MR;
    m.for_each_run(k0, kc, [&](int64_t k, const T* col, int64_t len) {
      T* d = dst + (k - k0) * MR;
      for (int64_t i = 0; i < mr; ++i) {
        const T* src = col + (i0 + i) * m.ld;
        for (int64_t t = 0; t < len; ++t) d[t * MR + i] = src[t];
      }
      for (int64_t i = mr; i < MR; ++i)
        for (int64_t t = 0; t < len; ++t) d[t * MR + i] = T(0);
    });
  }
};

// ------------------------------------------------------------------------------------ output ---

// Column j of C lives at column offset off(j); the run(j) columns from j on lie step() apart.
struct DenseColumns {
  int64_t operator()(int64_t j) const { return j; }
  int64_t run(int64_t j) const { return INT64_MAX - j; }
  int64_t step() const { return 1; }
};
// Columns j = n*L + l of an image-by-image output: offset n*img + l.
struct BatchedOutColumns {
  int64_t img, L;
  int64_t operator()(int64_t j) const { return (j / L) * img + j % L; }
  int64_t run(int64_t j) const { return L - j % L; }
  int64_t step() const { return 1; }
};

// C(i, j) at c[i*ldc + cols(j)]. First K block: C = alpha*AB + beta*C + bias[i] (C unread when
// beta == 0); later K blocks: C += alpha*AB. With row_sums, each finished tile's rows are summed
// (float64 sum and sum of squares, read back while the tile is in L1) into four lanes per row in the
// slots of its N chunk: row_sums[((chunk * 2 + {0, 1}) * sums_rows + i) * 4 + lane], tiles in column
// order within a chunk. The inference epilogue ep (activation and residual) is applied as the last K
// block's tile is stored (one pass over C, which matters when K is one short block: MobileNetV2's
// expansions), or after the sums, in finished(), when there are row sums.
template <typename T, class Cols>
struct MatrixOut {
  T* c;
  int64_t ldc;
  Cols cols;
  T alpha, beta;
  const T* row_bias;
  double* row_sums = nullptr;
  int64_t sums_rows = 0;
  ConvEpilogue<T> ep = {};  // applied to each finished tile, after its sums
  // Issued before the tile's micro-kernel runs, so C's lines (rows a page or more apart) arrive
  // while it computes; the next N panel's lines of C and of the residual go to L2 a tile column
  // ahead: an M block's rows are more streams than the hardware prefetcher follows, and the
  // residual was read by demand misses (8x64x56x56 -> 256 with a residual, 2 threads: 7.5-8.6 ->
  // 5.0-6.3 ms, 3.4-4.6 without it). asm prefetches: GCC deletes a loop of prefetch builtins.
  void prefetch(int64_t i0, int64_t mr, int64_t j0) const {
    const int64_t off = cols(j0);
    const T* res = ep.residual && !row_sums ? ep.residual + (c - ep.y) : nullptr;
    const int64_t ahead = cols(j0 + GemmBlocking<T>::NR);
    for (int64_t i = 0; i < mr; ++i)
      for (const T* m : {static_cast<const T*>(c), res})
        if (m) {
          const T* row = m + (i0 + i) * ldc;
          prefetch_run<1>(row + off, GemmBlocking<T>::NR);
          prefetch_run<2>(row + ahead, GemmBlocking<T>::NR);
        }
  }
  void operator()(int64_t i0, int64_t mr, int64_t j0, int64_t nr, const T* tile, bool first, bool last) const {
    constexpr int NR = GemmBlocking<T>::NR, W = Simd<T>::W;
    using V = vec_t<T>;
    const int64_t st = cols.step();
    const bool fuse_ep = last && !row_sums && ep.active();
    if (st == 1 && nr == NR && cols.run(j0) >= NR) {  // full-width contiguous tile: vector epilogue
      const int64_t off = cols(j0);
      const V va = gemm_splat(alpha), vb = gemm_splat(beta);
      for (int64_t i = 0; i < mr; ++i) {
        T* out = c + (i0 + i) * ldc + off;
        const V t0 = vload(tile + i * NR), t1 = vload(tile + i * NR + W);
        V r0, r1;
        if (!first) {
          r0 = vload(out) + va * t0, r1 = vload(out + W) + va * t1;
        } else {
          const V bias = gemm_splat(row_bias ? row_bias[i0 + i] : T(0));
          r0 = va * t0 + bias, r1 = va * t1 + bias;
          if (beta != T(0)) r0 += vb * vload(out), r1 += vb * vload(out + W);
        }
        if (fuse_ep) {
          if (ep.residual) {
            const T* res = ep.residual + (out - ep.y);
            r0 += vload(res), r1 += vload(res + W);
          }
          r0 = activate_vec<T>(ep.act, r0), r1 = activate_vec<T>(ep.act, r1);
        }
        vstore(out, r0), vstore(out + W, r1);
      }
      return;
    }
    for (int64_t jj = 0; jj < nr;) {
      const int64_t off = cols(j0 + jj), len = imin(cols.run(j0 + jj), nr - jj);
      for (int64_t i = 0; i < mr; ++i) {
        T* out = c + (i0 + i) * ldc + off;
        const T* t = tile + i * NR + jj;
        if (!first) {
          for (int64_t x = 0; x < len; ++x) out[x * st] += alpha * t[x];
        } else {
          const T bias = row_bias ? row_bias[i0 + i] : T(0);
          if (beta == T(0))
            for (int64_t x = 0; x < len; ++x) out[x * st] = alpha * t[x] + bias;
          else
            for (int64_t x = 0; x < len; ++x) out[x * st] = alpha * t[x] + beta * out[x * st] + bias;
        }
        if (fuse_ep)
          for (int64_t x = 0; x < len; ++x) out[x * st] = epilogue_one(ep, out[x * st], out + x * st);
      }
      jj += len;
    }
  }
  void finished(int64_t i0, int64_t mr, int64_t j0, int64_t nr, int64_t chunk) const {
    if (!row_sums) return;  // the epilogue, if any, was applied as the tile was stored
    sum_rows(i0, mr, j0, nr, chunk);
    if (!ep.active()) return;
    const int64_t st = cols.step();
    for (int64_t jj = 0; jj < nr;) {
      const int64_t off = cols(j0 + jj), len = imin(cols.run(j0 + jj), nr - jj);
      for (int64_t i = 0; i < mr; ++i) {
        T* out = c + (i0 + i) * ldc + off;
        if (st == 1)
          epilogue_apply(ep, out, len);
        else
          for (int64_t x = 0; x < len; ++x) out[x * st] = epilogue_one(ep, out[x * st], out + x * st);
      }
      jj += len;
    }
  }
  void sum_rows(int64_t i0, int64_t mr, int64_t j0, int64_t nr, int64_t chunk) const {
    constexpr int NR = GemmBlocking<T>::NR;
    double* sums = row_sums + chunk * 2 * sums_rows * 4;
    const int64_t st = cols.step();
    for (int64_t jj = 0; jj < nr;) {
      const int64_t off = cols(j0 + jj), len = imin(cols.run(j0 + jj), nr - jj);
      for (int64_t i = 0; i < mr; ++i) {
        const T* out = c + (i0 + i) * ldc + off;
        d4 s{}, q{};
        if (st == 1 && len == NR) {  // a full contiguous row: four lanes at a time
          for (int u = 0; u < NR; u += 4) {
            const d4 v = load4d(out + u);
            s += v, q += v * v;
          }
        } else {
          for (int64_t x = 0; x < len; ++x) {
            const double v = double(out[x * st]);
            s[0] += v, q[0] += v * v;
          }
        }
        add4d(sums + (i0 + i) * 4, s);
        add4d(sums + (sums_rows + i0 + i) * 4, q);
      }
      jj += len;
    }
  }
};

// ------------------------------------------------------------------------------------ driver ---

// Reduction steps per K block: K split into equal blocks of at most KC (576 = 2 x 288, not
// 256 + 256 + 64: fewer passes over C and no short tail block).
template <typename T>
int64_t gemm_kc(int64_t K) {
  const int64_t KC = GemmBlocking<T>::KC;
  return ceil_div(imax(K, 1), ceil_div(imax(K, 1), KC));
}

// Columns per N chunk (one work item): equal chunks, as many as a multiple of the thread count (13
// chunks of at most NC on 2 threads would leave one thread 7/6 of the other's work), and at least
// two per thread while each keeps kMinChunkPanels panels, so the dynamic schedule has slack without
// splitting M (an M split packs each B panel once per M part: a 3x3 layer's implicit im2col twice,
// ~15% of 8x256x28x28 stride 2). gemm_run splits M only when N is narrower than that.
constexpr int64_t kMinChunkPanels = 4;
template <typename T>
int64_t gemm_nc(int64_t N, int nthr) {
  using B = GemmBlocking<T>;
  const int64_t n_panels = imax(1, ceil_div(N, B::NR));
  int64_t chunks = ceil_div(ceil_div(n_panels * B::NR, B::NC), nthr) * nthr;
  if (n_panels >= 2 * nthr * kMinChunkPanels) chunks = imax(chunks, 2 * int64_t(nthr));
  return ceil_div(n_panels, imin(n_panels, chunks)) * B::NR;
}

constexpr int64_t kChunkAheadMinPanels = 16;
// Reductions of at most this many steps, done in one K block, into a C past the caches: each tile
// does little work and then writes C, so the order that streams C matters more than the order that
// keeps B in L1. An item then runs its M panels outer and its chunk's N panels inner (packed ahead,
// in groups of kRowsOuterBBytes that stay in L1): 6 rows of C are written front to back, where the
// usual order touched every row of the M block once per N panel (96 streams on MobileNetV2's
// 16 -> 96 channel 112x112 expand layer at batch 8, whose stores stalled: 4.11 -> 3.10 ms; 24 -> 144
// at 56x56 1.43 -> 1.30; min of 10 alternating runs). Below 8 MiB of C (batch 1) it only costs.
constexpr int64_t kRowsOuterMaxK = 32;
constexpr int64_t kRowsOuterMinCBytes = int64_t(8) << 20;
constexpr int64_t kRowsOuterBBytes = int64_t(32) << 10;

// N chunks of gemm_run (the slots of MatrixOut::row_sums).
template <typename T>
int64_t gemm_chunks(int64_t N, int nthr) {
  return ceil_div(imax(N, 1), gemm_nc<T>(N, nthr));
}

// Bytes of scratch gemm_run allocates for an M x N x K problem (reported by the convolutions).
template <typename T>
int64_t gemm_workspace_elems(int64_t M, int64_t N, int64_t K, int nthr) {
  using B = GemmBlocking<T>;
  const int64_t kc = gemm_kc<T>(K);
  const int64_t nc = gemm_nc<T>(N, nthr);
  return ceil_div(M, B::MR) * B::MR * kc + int64_t(nthr) * nc * kc;
}

// Splitting K over the threads (gemm_run_split_k) instead of M and N: for a reduction much longer
// than the output is large (a grad-weight: C[K', C'RS] summed over every pixel of the batch; 64 x 147
// for a stem, 96 x 16 for a MobileNetV2 expansion, over 100352 pixels), where the M/N schedule pays
// two barriers per K block for a few microseconds of products, and packs each B panel once per M
// part. Each thread sums its own range of K blocks into a private C; the copies are added in thread
// order at the end (the result is bitwise the same at a fixed thread count).
constexpr int64_t kSplitKMaxOutputElems = int64_t(256) << 10;  // a private C in L2
// The thread's A and B panels of one K block: up to 1 MiB (from 768 KiB: ResNet's 64 -> 128 stride-2
// 3x3 grad-weight, C[128 x 576] over 25088 pixels, 900 KiB of panels, 4.5 -> 3.8 ms at batch 8; 1x1
// 128 -> 512 at 28x28, 809 KiB, 3.9 -> 3.6; min of 9 alternating processes).
constexpr int64_t kSplitKMaxPanelBytes = int64_t(1024) << 10;
template <typename T>
bool gemm_splits_k(int64_t M, int64_t N, int64_t K, int nthr) {
  using B = GemmBlocking<T>;
  const int64_t kc = gemm_kc<T>(K), k_blocks = imax(1, ceil_div(K, kc));
  const int64_t m_pad = ceil_div(M, B::MR) * B::MR, n_pad = ceil_div(N, B::NR) * B::NR;
  return nthr > 1 && k_blocks >= 4 * nthr && m_pad * n_pad <= kSplitKMaxOutputElems &&
         (m_pad + n_pad) * kc * int64_t(sizeof(T)) <= kSplitKMaxPanelBytes;
}

// Scratch of gemm_run_split_k: per thread a private C and one K block of A and B panels.
template <typename T>
int64_t gemm_split_k_workspace_elems(int64_t M, int64_t N, int64_t K, int nthr) {
  using B = GemmBlocking<T>;
  const int64_t m_pad = ceil_div(M, B::MR) * B::MR, n_pad = ceil_div(N, B::NR) * B::NR;
  return int64_t(nthr) * (m_pad * n_pad + (m_pad + n_pad) * gemm_kc<T>(K));
}

// A matrix packed whole, for gemm_run's a_packed (P = MR rows per panel) or b_packed (P = NR
// columns per panel), so a matrix used by many calls (inference weights) is packed once: every K
// block's panels, block after block; block kb (k in [k0, k0+kc)) at dst + k0 * panels * P, panel p
// of it at + p * P * kc. pack_panel(e0, width, k0, kc, dst) packs one panel.
template <int P>
int64_t gemm_packed_elems(int64_t n, int64_t K) {
  return ceil_div(n, P) * P * imax(K, 1);
}

template <typename T, int P, class PackPanel>
void gemm_pack_whole(int64_t n, int64_t K, const PackPanel& pack_panel, T* dst) {
  const int64_t kc_max = gemm_kc<T>(K), panels = ceil_div(n, P), k_blocks = imax(1, ceil_div(K, kc_max));
#pragma omp parallel for num_threads(num_threads()) schedule(static) collapse(2)
  for (int64_t kb = 0; kb < k_blocks; ++kb)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t k0 = kb * kc_max, kc = imin(kc_max, K - k0);
      pack_panel(p * P, imin(int64_t(P), n - p * P), k0, kc, dst + k0 * panels * P + p * P * kc);
    }
}

template <typename T>
int64_t gemm_packed_a_elems(int64_t M, int64_t K) {
  return gemm_packed_elems<GemmBlocking<T>::MR>(M, K);
}

template <typename T, class PackA>
void gemm_pack_a(int64_t M, int64_t K, const PackA& pack_a, T* dst) {
  gemm_pack_whole<T, GemmBlocking<T>::MR>(M, K, pack_a, dst);  // pack_a(i0, mr, k0, kc, dst)
}

template <typename T>
int64_t gemm_packed_b_elems(int64_t K, int64_t N) {
  return gemm_packed_elems<GemmBlocking<T>::NR>(N, K);
}

template <typename T, class PackB>
void gemm_pack_b(int64_t K, int64_t N, const PackB& pack_b, T* dst) {
  gemm_pack_whole<T, GemmBlocking<T>::NR>(
      N, K, [&](int64_t j0, int64_t nr, int64_t k0, int64_t kc, T* d) { pack_b(k0, kc, j0, nr, d); }, dst);
}

// The K-split schedule (see gemm_splits_k): thread t takes K blocks [t*kb/nthr, (t+1)*kb/nthr),
// packs their A and B panels itself and accumulates every tile into its private C; then the tiles
// of the copies are summed in thread order and stored once (alpha, beta, bias, epilogue).
template <typename T, class PackA, class PackB, class Out>
void gemm_run_split_k(int64_t M, int64_t N, int64_t K, const PackA& pack_a, const PackB& pack_b, const Out& out,
                      int nthr) {
  using B = GemmBlocking<T>;
  using V = vec_t<T>;
  constexpr int MR = B::MR, NR = B::NR, W = Simd<T>::W;
  const int64_t kc_max = gemm_kc<T>(K), k_blocks = imax(1, ceil_div(K, kc_max));
  const int64_t m_panels = ceil_div(M, MR), n_panels = ceil_div(N, NR);
  const int64_t m_pad = m_panels * MR, n_pad = n_panels * NR;
  const int64_t per_thread = gemm_split_k_workspace_elems<T>(M, N, K, 1);  // C, then A and B panels
  Workspace ws(checked_bytes(int64_t(nthr) * per_thread, sizeof(T)));
#pragma omp parallel num_threads(nthr)
  {
    const int t = omp_get_thread_num();
    T* const c = ws.as<T>() + t * per_thread;
    T* const ap = c + m_pad * n_pad;
    T* const bp = ap + m_pad * kc_max;
    for (int64_t e = 0; e < m_pad * n_pad; ++e) c[e] = T(0);
    alignas(64) T tile[MR * NR];
    const int64_t kb_end = k_blocks * (t + 1) / nthr;
    for (int64_t kb = k_blocks * t / nthr; kb < kb_end; ++kb) {
      const int64_t k0 = kb * kc_max, kc = imin(kc_max, K - k0);
      for (int64_t ip = 0; ip < m_panels; ++ip) pack_a(ip * MR, imin(MR, M - ip * MR), k0, kc, ap + ip * MR * kc);
      for (int64_t jp = 0; jp < n_panels; ++jp) pack_b(k0, kc, jp * NR, imin(NR, N - jp * NR), bp + jp * NR * kc);
      // The next block's sources (gy and x rows of a grad-weight, straight from memory: their pack
      // waited on DRAM, ~25% of 8x64x56x56's 1x1 grad-weight) are fetched a panel per tile while
      // this block's tiles run: A's panels over the first tiles, then B's.
      const bool fetch_next = kb + 1 < kb_end;
      const int64_t k0n = k0 + kc, kcn = imin(kc_max, K - k0n);
      auto fetch_unit = [&](int64_t u) {
        if (u < m_panels) {
          if constexpr (HasSourcePrefetch<PackA>::value) pack_a.source_prefetch(u * MR, imin(MR, M - u * MR), k0n, kcn);
        } else if (u < m_panels + n_panels) {
          if constexpr (HasSourcePrefetch<PackB>::value)
            pack_b.source_prefetch((u - m_panels) * NR, imin(NR, N - (u - m_panels) * NR), k0n, kcn);
        }
      };
      for (int64_t jp = 0; jp < n_panels; ++jp)
        for (int64_t ip = 0; ip < m_panels; ++ip) {
          if (fetch_next) {
            const int64_t u = jp * m_panels + ip;
            fetch_unit(u);
            if (u == m_panels * n_panels - 1)
              for (int64_t v = u + 1; v < m_panels + n_panels; ++v) fetch_unit(v);
          }
          gemm_micro_kernel<T>(kc, ap + ip * MR * kc, bp + jp * NR * kc, tile);
          T* ct = c + ip * MR * n_pad + jp * NR;
          for (int i = 0; i < MR; ++i)
            for (int v = 0; v < NR; v += W) vstore(ct + i * n_pad + v, vload(ct + i * n_pad + v) + vload(tile + i * NR + v));
        }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t tix = 0; tix < m_panels * n_panels; ++tix) {
      const int64_t ip = tix / n_panels, jp = tix % n_panels;
      for (int i = 0; i < MR; ++i)
        for (int v = 0; v < NR; v += W) {
          const int64_t off = (ip * MR + i) * n_pad + jp * NR + v;
          V sum = vload(ws.as<T>() + off);
          for (int u = 1; u < nthr; ++u) sum += vload(ws.as<T>() + u * per_thread + off);
          vstore(tile + i * NR + v, sum);
        }
      const int64_t mr = imin(MR, M - ip * MR), nr = imin(NR, N - jp * NR);
      out(ip * MR, mr, jp * NR, nr, tile, true, true);
      out.finished(ip * MR, mr, jp * NR, nr, 0);
    }
  }
}

// nthr: the caller's thread count when it sized per-chunk state (gemm_chunks); another Python
// thread may change num_threads() meanwhile. a_packed: A as gemm_pack_a wrote it (then pack_a is
// not called), or null; b_packed: B as gemm_pack_b wrote it (then pack_b is not called), or null.
// may_split_k: the caller allows the K-split schedule (no row sums; it sized its workspace report
// with gemm_splits_k), taken where gemm_splits_k says so.
template <typename T, class PackA, class PackB, class Out>
void gemm_run(int64_t M, int64_t N, int64_t K, const PackA& pack_a, const PackB& pack_b, const Out& out,
              int nthr = num_threads(), const T* a_packed = nullptr, bool may_split_k = false,
              const T* b_packed = nullptr) {
  using B = GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR;
  if (M <= 0 || N <= 0) return;
  if (may_split_k && !a_packed && !b_packed && !out.row_sums && gemm_splits_k<T>(M, N, K, nthr))
    return gemm_run_split_k<T>(M, N, K, pack_a, pack_b, out, nthr);
  const int64_t kc_max = gemm_kc<T>(K);
  const int64_t nc = gemm_nc<T>(N, nthr);
  const int64_t n_chunks = gemm_chunks<T>(N, nthr);  // the row_sums slots are sized by the same count
  const int64_t m_panels = ceil_div(M, MR), n_panels = ceil_div(N, NR);
  // Few N chunks (batch-1 layers with small outputs): M is split too, into at least two items per
  // thread, so the dynamic schedule can even out chunks of unequal width (49 columns: 32 + 17).
  const int64_t m_splits = imin(m_panels, imax(1, ceil_div(n_chunks < 2 * nthr ? 2 * nthr : nthr, n_chunks)));
  const int64_t items = n_chunks * m_splits;
  const int64_t k_blocks = imax(1, ceil_div(K, kc_max));
  Workspace apack(a_packed ? 0 : checked_bytes(m_panels * MR * kc_max, sizeof(T)));
  Workspace bpack(b_packed ? 0 : checked_bytes(int64_t(nthr) * nc * kc_max, sizeof(T)));
#pragma omp parallel num_threads(nthr)
  {
    T* const bp = b_packed ? nullptr : bpack.as<T>() + int64_t(omp_get_thread_num()) * nc * kc_max;
    alignas(64) T tile[MR * NR];
    // One work item (N chunk jc, M part ms) over K block kb, A's panels for that block at ap.
    auto run_item = [&](int64_t item, int64_t kb, const T* ap) {
      const int64_t k0 = kb * kc_max, kc = imin(kc_max, K - k0);
      const int64_t jc = item / m_splits, ms = item % m_splits;
      // chunk jc: panels [jc * n_panels / n_chunks, ...), widths within one panel of each other (25
      // panels in 4 chunks: 6, 6, 6, 7, not 7, 7, 7, 4, which left one of 2 threads 14 panels, the other 11)
      const int64_t pb0 = jc * n_panels / n_chunks, pb1 = (jc + 1) * n_panels / n_chunks;
      const int64_t j0 = pb0 * NR, ncur = imin(pb1 * NR, N) - j0;
      const int64_t ip_begin = m_panels * ms / m_splits, ip_end = m_panels * (ms + 1) / m_splits;
      const int64_t mc_panels = B::MC / MR;
      // With one M block, every B panel is used right after it is packed; with several, the
      // chunk is packed once and reused by each. A packer with a row-by-row chunk() packs ahead
      // from 16 M panels on too (1x1 512 -> 128 at 28x28: 5% faster; at 64 rows slower).
      const int64_t m_panels_here = ip_end - ip_begin;
      const bool rows_outer = k_blocks == 1 && kc <= kRowsOuterMaxK && m_panels_here > 1 &&
                              M * N * int64_t(sizeof(T)) >= kRowsOuterMinCBytes;
      const bool pack_ahead = !b_packed && (rows_outer || m_panels_here > mc_panels ||
                                            (HasChunkPacker<PackB>::value && m_panels_here >= kChunkAheadMinPanels));
      if (pack_ahead) gemm_pack_b_chunk<T>(pack_b, k0, kc, j0, ncur, bp);
      // N panel jp of the chunk: prepared, packed ahead, or packed just in time into one slot
      auto b_panel = [&](int64_t jp) -> const T* {
        return b_packed ? b_packed + k0 * n_panels * NR + (pb0 + jp) * NR * kc : pack_ahead ? bp + jp * NR * kc : bp;
      };
      if (rows_outer) {
        // N panels in groups whose B panels stay in L1 (kRowsOuterBBytes), each swept by every M panel
        const int64_t np = ceil_div(ncur, NR), group = imax(1, kRowsOuterBBytes / (kc * NR * int64_t(sizeof(T))));
        for (int64_t g0 = 0; g0 < np; g0 += group)
          for (int64_t ip = ip_begin; ip < ip_end; ++ip)
            for (int64_t jp = g0; jp < imin(np, g0 + group); ++jp) {
              const int64_t nr = imin(NR, ncur - jp * NR), mr = imin(MR, M - ip * MR);
              gemm_micro_kernel<T>(kc, ap + ip * MR * kc, b_panel(jp), tile);
              out(ip * MR, mr, j0 + jp * NR, nr, tile, true, true);
              out.finished(ip * MR, mr, j0 + jp * NR, nr, jc);
            }
        return;
      }
      for (int64_t ic = ip_begin; ic < ip_end; ic += mc_panels) {
        const int64_t ic_end = imin(ip_end, ic + mc_panels);
        for (int64_t jp = 0; jp < ceil_div(ncur, NR); ++jp) {
          // packed just in time into one slot, which stays in L1 (a fresh slot per panel costs a
          // write miss per line: 8-17% on 64-channel layers)
          const int64_t nr = imin(NR, ncur - jp * NR);
          const T* bpanel = b_panel(jp);
          if (!pack_ahead && !b_packed) {
            pack_b(k0, kc, j0 + jp * NR, nr, bp);
            // the next panel's sources (rows a plane apart: one stream each, more than the hardware
            // prefetcher follows) come into L2 while this one runs against every M panel
            if constexpr (HasSourcePrefetch<PackB>::value) {
              const int64_t next = (jp + 1) * NR;
              if (next < ncur) pack_b.source_prefetch(j0 + next, imin(NR, ncur - next), k0, kc);
            }
          }
          for (int64_t ip = ic; ip < ic_end; ++ip) {
            out.prefetch(ip * MR, imin(MR, M - ip * MR), j0 + jp * NR);
            gemm_micro_kernel<T>(kc, ap + ip * MR * kc, bpanel, tile);
            out(ip * MR, imin(MR, M - ip * MR), j0 + jp * NR, nr, tile, kb == 0, kb == k_blocks - 1);
            if (kb == k_blocks - 1) out.finished(ip * MR, imin(MR, M - ip * MR), j0 + jp * NR, nr, jc);
          }
        }
      }
    };
    if (a_packed) {
      // A packed ahead (prepared weights): an item runs all its K blocks, so its part of C stays in
      // cache between them and the threads never wait for each other between blocks.
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item)
        for (int64_t kb = 0; kb < k_blocks; ++kb) run_item(item, kb, a_packed + kb * kc_max * m_panels * MR);
    } else {
      for (int64_t kb = 0; kb < k_blocks; ++kb) {
        const int64_t k0 = kb * kc_max, kc = imin(kc_max, K - k0);
#pragma omp for schedule(static)
        for (int64_t ip = 0; ip < m_panels; ++ip)
          pack_a(ip * MR, imin(MR, M - ip * MR), k0, kc, apack.as<T>() + ip * MR * kc);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) run_item(item, kb, apack.as<T>());
      }
    }
  }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
