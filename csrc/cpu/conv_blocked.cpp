// Channel-blocked direct convolution, forward, NCHW in and out, float32 / float64, any stride, padding
// and dilation, groups with at least W (the SIMD width) output channels per group:
//
//   y[n, gK+k, p, q] = b[k] + sum_{c,r,s} w[gK+k, c, r, s] * x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//
// Layouts (W = 8 floats or 4 doubles, NR = 2W output channels, channels past Cg or Kg are zero):
//   xb[n][g][cb][Hp][Wp][L]      the input in blocks of L channels, zero padded on every side, so the
//                                kernel reads any (p, q, r, s) without a bounds test
//   wb[g][kp][cb][r][s][ci][NR]  the filters in panels of NR output channels, ci < L
// L = W; narrow input groups (Cg < W: a network's RGB stem) take L = Cg, one block of all their
// channels interleaved per pixel, run by a kernel unrolled for L lanes: W lanes would multiply 5
// zero channels of every 8 (MobileNetV2's 3 -> 32 stem ran the row loops over plain NCHW at
// 40 GFLOP/s, 0.6x torch at batch 8; now 1.1-1.2x).
// Register tile: MR = 6 output pixels x NR output channels (12 accumulators; AVX-512: 12 pixels, 24
// accumulators). One step of the reduction over (cb, r, s, ci) is 2 filter-vector loads, MR
// broadcasts of input pixels and 2*MR FMAs: the GEMM micro-kernel's shape, without im2col and
// without packing the input per tile. The MR pixels are any MR consecutive output pixels of the
// batch (rows and images wrap), each read through its own pointer, so a 7x7 output fills 49 of 54
// lanes instead of 7 of every 12 with row-bound tiles.
//
// Tasks: (group, panel, block of pixels), blocks of equal size. Loop order per task: input channels
// in chunks whose filters (R*S*W*NR values a block) stay in L1 while the block's pixels stream
// past; between chunks the partial sums wait in a per-thread [pixel][NR] tile (L2). After the last
// chunk the tile is transposed into y's channel planes (a pixel block is contiguous in each plane),
// with the bias, the batch-norm statistics and the inference epilogue applied while it is in cache.
#include "cpu/conv_blocked.h"

#include "common/runtime.h"
#include "cpu/epilogue.h"
#include "cpu/gemm_driver.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

#include <omp.h>

#include <vector>

namespace pyconv {
namespace PYCONV_ISA {
namespace {

#if defined(PYCONV_SIMD_AVX512)
constexpr int kMR = 12;  // output pixels per register tile: 24 accumulators of the 32 zmm registers
#else
constexpr int kMR = 6;  // output pixels per register tile
#endif
constexpr int64_t kBlockPixels = 960;   // most pixels per task: a [960][NR] float tile is 60 KiB (AVX2)
constexpr int64_t kChunkBytes = 16384;  // filters of one input-channel chunk, kept in L1
// Prepared filters (inference): a header (Kg, Cg, R, S, G, W) checked against each call, then wb.
constexpr int64_t kPreparedHeader = 16;
// The AVX-512 kernel reads a chunk's (channel block, tap) offsets as deltas (each pair's offset
// minus the one before), closed by kTapEnd; the other kernels read the offsets themselves.
#define PYCONV_TAP_END -1
#define PYCONV_STR_(x) #x
#define PYCONV_STR(x) PYCONV_STR_(x)
constexpr int64_t kTapEnd = PYCONV_TAP_END;
#if defined(PYCONV_SIMD_AVX512)
constexpr bool kTapDeltas = true;
#else
constexpr bool kTapDeltas = false;
#endif

struct Blocked {
  ConvShape s;
  bool narrow;             // Cg < W: one block of L = Cg channels
  int64_t L;               // channels per block: W, or Cg
  int64_t Cb, Kp, Hp, Wp;  // input channel blocks, output panels, padded input rows and columns
  int64_t PQ, nblk;        // output pixels per image, pixel blocks of the batch
  int64_t blk_pixels;      // pixels per block (the last may have fewer)
  // A phase of a strided grad-input (backward_input_phased) reads an input blocked for all phases
  // (origin: its (0, 0) in that layout) and writes output pixel (p, q) to row p*ysh + y0h, column
  // q*ysw + y0w of planes y_h x y_w; a forward has origin 0 and writes its own P x Q planes.
  int64_t origin = 0;
  int64_t y_h = 0, y_w = 0, ysh = 1, ysw = 1, y0h = 0, y0w = 0;
  bool phase = false;
  int64_t image() const { return s.G * Cb * Hp * Wp * L; }  // xb elements per image
};

template <typename T>
Blocked plan(const ConvShape& s) {
  constexpr int W = Simd<T>::W;
  const bool narrow = s.Cg() < W;
  const int64_t L = narrow ? s.Cg() : W;
  Blocked b{s, narrow, L, ceil_div(s.Cg(), L), ceil_div(s.Kg(), 2 * W), 0, 0, s.P * s.Q, 0, 0};
  b.Hp = (s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1;
  b.Wp = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1;
  b.y_h = s.P, b.y_w = s.Q;
  return b;
}

// The batch's pixels in blocks of equal size (whole register tiles), as many as the threads need:
// one block of 960 and one of 608 (a 14x14 layer at batch 8) kept one of two threads idle for a
// fifth of the call; with fewer panels than threads, or a panel count they do not divide, the block
// count is a multiple of the threads.
void split_pixels(Blocked& b, int nthr) {
  const int64_t npq = b.s.N * b.PQ, units = b.s.G * b.Kp;
  int64_t nblk = ceil_div(npq, kBlockPixels);
  if (units % nthr && npq >= nthr * kMR) nblk = ceil_div(nblk, nthr) * nthr;
  b.blk_pixels = imin(kBlockPixels, ceil_div(ceil_div(npq, nblk), kMR) * kMR);
  b.nblk = ceil_div(npq, b.blk_pixels);
}

// Elements of wb.
template <typename T>
int64_t filters_numel(const Blocked& b) {
  return b.s.G * b.Kp * b.Cb * b.s.R * b.s.S * b.L * 2 * Simd<T>::W;
}

// x -> xb for narrow groups: row (n, g, i) of xb interleaves the group's L channels per column.
template <typename T>
void block_input_narrow(const Blocked& b, const T* x, T* xb) {
  const ConvShape& s = b.s;
  const int64_t L = b.L, rows = s.N * s.G * b.Hp, row_elems = b.Wp * L;
  const int64_t lo = imin(s.pad_w, b.Wp), hi = imax(lo, imin(b.Wp, s.pad_w + s.W));
#pragma omp for schedule(static) nowait
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t si = row % b.Hp - s.pad_h, ng = row / b.Hp;
    T* out = xb + row * row_elems;
    if (si < 0 || si >= s.H) {
      for (int64_t e = 0; e < row_elems; ++e) out[e] = T(0);
      continue;
    }
    for (int64_t e = 0; e < lo * L; ++e) out[e] = T(0);
    for (int64_t c = 0; c < L; ++c) {
      // x's row of channel (n, g*Cg + c), indexed by xb's column
      const T* src = x + ((ng / s.G * s.C + ng % s.G * L + c) * s.H + si) * s.W - s.pad_w;
      for (int64_t j = lo; j < hi; ++j) out[j * L + c] = src[j];
    }
    for (int64_t e = hi * L; e < row_elems; ++e) out[e] = T(0);
  }
}

// x -> xb. Rows of W channels are transposed W columns at a time in registers; the padding and the
// columns near the edges are written element by element. A worksharing loop without a barrier: call
// it from every thread of a parallel region (alone, it runs on the calling thread).
template <typename T>
void block_input(const Blocked& b, const T* x, T* xb) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  if (b.narrow) return block_input_narrow(b, x, xb);
  const ConvShape& s = b.s;
  const int64_t Cg = s.Cg(), rows = s.N * s.G * b.Cb * b.Hp;
#pragma omp for schedule(static) nowait
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t i = row % b.Hp, cbi = row / b.Hp % b.Cb, ng = row / (b.Hp * b.Cb);
    const int64_t n = ng / s.G, g = ng % s.G;
    T* out = xb + row * b.Wp * W;
    const int64_t si = i - s.pad_h;
    const int64_t c0 = cbi * W, nc = imin(W, Cg - c0);
    if (si < 0 || si >= s.H) {
      for (int64_t e = 0; e < b.Wp * W; ++e) out[e] = T(0);
      continue;
    }
    const T* src[W];
    for (int l = 0; l < W; ++l) src[l] = x + ((n * s.C + g * Cg + c0 + imin(l, nc - 1)) * s.H + si) * s.W;
    // column j of xb is x's column j - pad_w: whole vectors where W of them lie inside the row
    int64_t j = 0;
    for (; j < imin(s.pad_w, b.Wp); ++j)
      for (int l = 0; l < W; ++l) out[j * W + l] = T(0);
    for (; j + W <= b.Wp && j - s.pad_w + W <= s.W; j += W) {
      V r[W];
      for (int l = 0; l < W; ++l) r[l] = l < nc ? vload(src[l] + (j - s.pad_w)) : V{};
      vtranspose(r);
      for (int m = 0; m < W; ++m) vstore(out + (j + m) * W, r[m]);
    }
    // the row's last columns (fewer than W; a whole 7- or 14-wide row with AVX-512's 16 lanes) as one
    // masked step rather than element by element
    if (const int64_t left = imin(b.Wp - j, s.W - (j - s.pad_w)); j >= s.pad_w && left > 0) {
      const LaneMask<T> cols(0, left);
      V r[W];
      for (int l = 0; l < W; ++l) r[l] = l < nc ? vload_masked(src[l] + (j - s.pad_w), cols) : V{};
      vtranspose(r);
      for (int m = 0; m < left; ++m) vstore(out + (j + m) * W, r[m]);
      j += left;
    }
    for (; j < b.Wp; ++j) {
      const int64_t sj = j - s.pad_w;
      for (int l = 0; l < W; ++l) out[j * W + l] = (l < nc && sj >= 0 && sj < s.W) ? src[l][sj] : T(0);
    }
  }
}

// w -> wb, zero past Kg and Cg (a worksharing loop without a barrier, as block_input). Rows of w (one output channel: Cg*R*S contiguous values) are read
// W at a time from W channels and transposed in registers: each result is one (c, r, s) for W
// output channels, a vector of the panel (element by element, this was 10% of a training forward).
template <typename T>
void block_filters(const Blocked& b, const T* w, T* wb) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W, NR = 2 * W;
  const ConvShape& s = b.s;
  const int64_t L = b.L, Cg = s.Cg(), Kg = s.Kg(), RS = s.R * s.S, row = Cg * RS, panel = b.Cb * RS * L * NR;
  auto at = [&](int64_t e) { return ((e / RS / L * RS + e % RS) * L + e / RS % L) * NR; };
#pragma omp for schedule(static) nowait
  for (int64_t gk = 0; gk < s.G * b.Kp; ++gk) {
    const int64_t g = gk / b.Kp, kp = gk % b.Kp;
    T* out = wb + gk * panel;
    if (Cg % L || (kp + 1) * NR > Kg)
      for (int64_t e = 0; e < panel; ++e) out[e] = T(0);
    for (int h = 0; h < 2; ++h) {
      const int64_t k0 = kp * NR + h * W, kn = imin(W, Kg - k0);
      if (kn <= 0) break;
      const T* wk = w + (g * Kg + k0) * row;
      int64_t e0 = 0;
      for (; e0 + W <= row; e0 += W) {
        V r[W];
        for (int l = 0; l < W; ++l) r[l] = l < kn ? vload(wk + l * row + e0) : V{};
        vtranspose(r);
        for (int m = 0; m < W; ++m) vstore(out + at(e0 + m) + h * W, r[m]);
      }
      for (; e0 < row; ++e0)
        for (int l = 0; l < kn; ++l) out[at(e0) + h * W + l] = wk[l * row + e0];
    }
  }
}

// Where a forward tap goes in grad-input's filters: the phase (an index into the caller's list; a
// stride-1 layer has one) and the tap within it.
struct TapDest {
  int64_t phase, tap;
};

// The filters of grad-input's convolutions (input channels: the forward's outputs, output channels:
// its inputs, taps rotated) as panels, one set per phase:
//   wb_f'[g][cp][kb][tap][ki][NR] = w[g][kb*W + ki][cp*NR + j][the forward tap with dest (f, tap)],
// zero past the channel counts. Every phase has the same panels and channel blocks (it differs in
// taps only), so one pass over w serves all of them: per (forward output channel, W of its input
// channels) the Rf*Sf taps of each are W rows of contiguous values, transposed in registers W taps
// at a time; each result is one tap for W channels, a vector of its phase's panel (element by
// element this pass was most of a batch-1 strided grad-input).
template <typename T>
void block_filters_transposed(const Blocked* const* phases, T* const* wbs, const TapDest* dest, int64_t nphases,
                              int64_t Kf, int64_t Cf, int64_t RSf, const T* w) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W, NR = 2 * W;
  const Blocked& b0 = *phases[0];  // grad-input's problem: Cg() = Kf, Kg() = Cf
  const int64_t L = b0.L;
#pragma omp for schedule(static) nowait
  for (int64_t gc = 0; gc < b0.s.G * b0.Kp; ++gc) {
    const int64_t g = gc / b0.Kp, cp = gc % b0.Kp, c0 = cp * NR, cn = imin(NR, Cf - c0);
    if (cn < NR || Kf % L)
      for (int64_t f = 0; f < nphases; ++f) {
        const int64_t panel = b0.Cb * phases[f]->s.R * phases[f]->s.S * L * NR;
        for (int64_t e = 0; e < panel; ++e) wbs[f][gc * panel + e] = T(0);
      }
    for (int64_t k = 0; k < Kf; ++k)
      for (int h = 0; h * W < cn; ++h) {
        const int64_t ch = imin(W, cn - h * W);
        const T* src = w + ((g * Kf + k) * Cf + c0 + h * W) * RSf;  // [ch][RSf]
        for (int64_t t0 = 0; t0 < RSf; t0 += W) {
          const int64_t nt = imin(W, RSf - t0);
          const LaneMask<T> taps(0, nt);
          V r[W];
          for (int l = 0; l < W; ++l) r[l] = l < ch ? vload_masked(src + l * RSf + t0, taps) : V{};
          vtranspose(r);
          for (int m = 0; m < nt; ++m) {
            const TapDest d = dest[t0 + m];
            if (d.phase < 0) continue;  // a phase without pixels
            const int64_t RS = phases[d.phase]->s.R * phases[d.phase]->s.S;
            vstore(wbs[d.phase] + gc * b0.Cb * RS * L * NR + ((k / L * RS + d.tap) * L + k % L) * NR + h * W, r[m]);
          }
        }
      }
  }
}

// acc[MR][NR] += (with `fresh`: =) sum over `steps` (channel block, tap) pairs and their L lanes of
// the MR pixels' inputs times the filter panel w. px[u]: pixel u's input at the chunk's origin;
// offs[j]: byte offset of pair j from there. Portable version (vector extensions). A task's first
// chunk starts fresh: no zeroed tile to read back (the zeroing was 8% of an RGB stem's call).
template <typename T, int L>
PYCONV_INLINE void tile_kernel_portable(const T* const* px, const T* w, const int64_t* offs, int64_t steps, T* acc,
                                        int64_t fresh) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W, NR = 2 * W;
  V c[kMR][2];
  for (int u = 0; u < kMR; ++u)
    c[u][0] = fresh ? V{} : vload(acc + u * NR), c[u][1] = fresh ? V{} : vload(acc + u * NR + W);
  for (int64_t j = 0; j < steps; ++j) {
    const int64_t o = offs[j] / int64_t(sizeof(T));
    for (int ci = 0; ci < L; ++ci, w += NR) {
      const V b0 = vload(w), b1 = vload(w + W);
      for (int u = 0; u < kMR; ++u) {
        const V a = gemm_splat(px[u][o + ci]);
        c[u][0] += a * b0, c[u][1] += a * b1;
      }
    }
  }
  for (int u = 0; u < kMR; ++u) vstore(acc + u * NR, c[u][0]), vstore(acc + u * NR + W, c[u][1]);
}

// One kernel per lane count L (the channels of a block: W, or a narrow group's Cg), its lane steps
// unrolled, so the offset load and the loop's counters are paid once per tap, not once per lane.
// Portable here; AVX2 + FMA specializes every count below.
template <typename T, int L>
struct BlkKernel {
  static void run(const T* const* px, const T* w, const int64_t* offs, int64_t steps, T* acc, int64_t fresh) {
    tile_kernel_portable<T, L>(px, w, offs, steps, acc, fresh);
  }
};

#if defined(PYCONV_SIMD_AVX2)
// AVX2 + FMA: the same kernel in assembly (GCC's allocation of the version above copied and spilled
// accumulators). ymm0-11 accumulate, ymm12-13 hold the filter row, ymm14 the broadcast input; one
// lane step: 2 loads, 6 broadcasts (pixel pointer + pair offset + lane), 12 FMAs.
#define PYCONV_BLK_ROW(X, disp, acc0, acc1)                         \
  "vbroadcast" PYCONV_SFX " " disp "(%[" X "],%[o]), %%ymm14\n\t"  \
  "vfmadd231p" PYCONV_P " %%ymm12, %%ymm14, %%ymm" acc0 "\n\t"     \
  "vfmadd231p" PYCONV_P " %%ymm13, %%ymm14, %%ymm" acc1 "\n\t"
#define PYCONV_BLK_STEP(disp, woff)                                                            \
  "vmovups " woff "(%[w]), %%ymm12\n\t"                                                       \
  "vmovups " woff "+32(%[w]), %%ymm13\n\t"                                                    \
  PYCONV_BLK_ROW("x0", disp, "0", "1") PYCONV_BLK_ROW("x1", disp, "2", "3")                   \
  PYCONV_BLK_ROW("x2", disp, "4", "5") PYCONV_BLK_ROW("x3", disp, "6", "7")                   \
  PYCONV_BLK_ROW("x4", disp, "8", "9") PYCONV_BLK_ROW("x5", disp, "10", "11")
#define PYCONV_BLK_KERNEL(T, L, LANES)                                                                  \
  template <>                                                                                         \
  struct BlkKernel<T, L> {                                                                            \
    static void run(const T* const* px, const T* w, const int64_t* offs, int64_t steps, T* acc,      \
                    int64_t fresh) {                                                                  \
      int64_t o;                                                                                      \
      __asm__ volatile(                                                                               \
          "cmpq $0, %[fresh]\n\t"                                                                     \
          "jne 5f\n\t"                                                                                \
          PYCONV_ASM_TILE_LOAD                                                                        \
          "jmp 6f\n"                                                                                  \
          "5:\n\t"                                                                                    \
          PYCONV_ASM_TILE_ZERO                                                                        \
          "6:\n\t"                                                                                    \
          ".p2align 4\n"                                                                              \
          "1:\n\t"                                                                                    \
          "mov (%[offs]), %[o]\n\t"                                                                   \
          "add $8, %[offs]\n\t"                                                                       \
          LANES                                                                                       \
          "add $" #L "*" PYCONV_BLK_PANEL ", %[w]\n\t"                                                \
          "dec %[n]\n\t"                                                                              \
          "jnz 1b\n\t"                                                                                \
          PYCONV_ASM_TILE_STORE                                                                       \
          : [w] "+r"(w), [offs] "+r"(offs), [n] "+r"(steps), [o] "=&r"(o)                            \
          : [x0] "r"(px[0]), [x1] "r"(px[1]), [x2] "r"(px[2]), [x3] "r"(px[3]), [x4] "r"(px[4]),     \
            [x5] "r"(px[5]), [t] "r"(acc), [fresh] "m"(fresh)                                        \
          : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
            "xmm11", "xmm12", "xmm13", "xmm14", "memory", "cc");                                     \
    }                                                                                                 \
  };
#define PYCONV_BLK_PANEL "64"  // bytes of a filter row (NR values)
#elif defined(PYCONV_SIMD_AVX512)
// AVX-512: the 12-pixel kernel in assembly. GCC's version of the loop above kept the lane loop
// rolled and spilled two of the 12 pixel pointers (a vmovq and a stack load per lane step, with the
// loop counters on the FMA ports: 77% of one core's FMA peak on a 3x3 256-channel layer, where torch
// runs 95%). Here every lane of a tap is unrolled; zmm0-23 accumulate, zmm24-25 hold the filter row,
// zmm26 the broadcast input. 14 general registers, so that builds keeping a frame pointer (debug,
// sanitizers) can allocate them: the 12 pixel pointers (each moved by the pair's offset delta, read
// from memory: no offset register), the filter pointer and the delta pointer; the deltas end with
// kTapEnd (no counter), and the tile's address waits in a vector register (the delta pointer holds
// it while the tile is loaded and stored, its own value in xmm28). With 15 registers (an offset
// register instead of the 12 pointer moves a pair) the RGB stems ran 7-16% faster, wide layers the
// same, but a frame pointer leaves 14.
#define PYCONV_BLK_ROW(X, disp, acc0, acc1)                     \
  "vbroadcast" PYCONV_SFX " " disp "(%[" X "]), %%zmm26\n\t"    \
  "vfmadd231p" PYCONV_P " %%zmm24, %%zmm26, %%zmm" acc0 "\n\t"  \
  "vfmadd231p" PYCONV_P " %%zmm25, %%zmm26, %%zmm" acc1 "\n\t"
#define PYCONV_BLK_STEP(disp, woff)                                                   \
  "vmovups " woff "(%[w]), %%zmm24\n\t"                                               \
  "vmovups " woff "+64(%[w]), %%zmm25\n\t"                                            \
  PYCONV_BLK_ROW("x0", disp, "0", "1") PYCONV_BLK_ROW("x1", disp, "2", "3")           \
  PYCONV_BLK_ROW("x2", disp, "4", "5") PYCONV_BLK_ROW("x3", disp, "6", "7")           \
  PYCONV_BLK_ROW("x4", disp, "8", "9") PYCONV_BLK_ROW("x5", disp, "10", "11")         \
  PYCONV_BLK_ROW("x6", disp, "12", "13") PYCONV_BLK_ROW("x7", disp, "14", "15")       \
  PYCONV_BLK_ROW("x8", disp, "16", "17") PYCONV_BLK_ROW("x9", disp, "18", "19")       \
  PYCONV_BLK_ROW("x10", disp, "20", "21") PYCONV_BLK_ROW("x11", disp, "22", "23")
#define PYCONV_BLK512_MOV(j) "vmovups " #j "*64(%[offs]), %%zmm" #j "\n\t"
#define PYCONV_BLK512_PUT(j) "vmovups %%zmm" #j ", " #j "*64(%[offs])\n\t"
#define PYCONV_BLK512_ZERO(j) "vpxord %%zmm" #j ", %%zmm" #j ", %%zmm" #j "\n\t"
#define PYCONV_BLK512_TILE(OP)                                                                  \
  OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) \
  OP(15) OP(16) OP(17) OP(18) OP(19) OP(20) OP(21) OP(22) OP(23)
#define PYCONV_BLK512_MOVE(X) "add (%[offs]), %[" X "]\n\t"
// START: the tile's accumulators loaded (PYCONV_BLK512_MOV) or zeroed.
#define PYCONV_BLK512_ASM(START, LANES, L)                                                              \
  __asm__ volatile(                                                                                   \
      "vmovq %[offs], %%xmm28\n\t"                                                                    \
      "vmovq %[t], %[offs]\n\t"                                                                       \
      PYCONV_BLK512_TILE(START)                                                                       \
      "vmovq %%xmm28, %[offs]\n\t"                                                                    \
      ".p2align 4\n"                                                                                  \
      "1:\n\t"                                                                                        \
      PYCONV_BLK512_MOVE("x0") PYCONV_BLK512_MOVE("x1") PYCONV_BLK512_MOVE("x2")                      \
      PYCONV_BLK512_MOVE("x3") PYCONV_BLK512_MOVE("x4") PYCONV_BLK512_MOVE("x5")                      \
      PYCONV_BLK512_MOVE("x6") PYCONV_BLK512_MOVE("x7") PYCONV_BLK512_MOVE("x8")                      \
      PYCONV_BLK512_MOVE("x9") PYCONV_BLK512_MOVE("x10") PYCONV_BLK512_MOVE("x11")                    \
      "add $8, %[offs]\n\t"                                                                           \
      LANES                                                                                           \
      "add $" #L "*" PYCONV_BLK_PANEL ", %[w]\n\t"                                                    \
      "cmpq $" PYCONV_STR(PYCONV_TAP_END) ", (%[offs])\n\t"                                           \
      "jne 1b\n\t"                                                                                    \
      "vmovq %[t], %[offs]\n\t"                                                                       \
      PYCONV_BLK512_TILE(PYCONV_BLK512_PUT)                                                           \
      : [w] "+r"(w), [offs] "+r"(offs), [x0] "+r"(x0), [x1] "+r"(x1), [x2] "+r"(x2), [x3] "+r"(x3),  \
        [x4] "+r"(x4), [x5] "+r"(x5), [x6] "+r"(x6), [x7] "+r"(x7), [x8] "+r"(x8), [x9] "+r"(x9),    \
        [x10] "+r"(x10), [x11] "+r"(x11)                                                              \
      : [t] "v"(t)                                                                                    \
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",     \
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",    \
        "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm28", "memory", "cc")
#define PYCONV_BLK_KERNEL(T, L, LANES)                                                                  \
  template <>                                                                                         \
  struct BlkKernel<T, L> {                                                                            \
    static void run(const T* const* px, const T* w, const int64_t* offs, int64_t, T* acc,            \
                    int64_t fresh) {                                                                  \
      static_assert(kMR == 12, "the assembly kernel holds 12 pixels");                               \
      const T *x0 = px[0], *x1 = px[1], *x2 = px[2], *x3 = px[3], *x4 = px[4], *x5 = px[5];          \
      const T *x6 = px[6], *x7 = px[7], *x8 = px[8], *x9 = px[9], *x10 = px[10], *x11 = px[11];      \
      const __m128i t = _mm_cvtsi64_si128(reinterpret_cast<int64_t>(acc));                            \
      if (fresh)                                                                                      \
        PYCONV_BLK512_ASM(PYCONV_BLK512_ZERO, LANES, L);                                              \
      else                                                                                            \
        PYCONV_BLK512_ASM(PYCONV_BLK512_MOV, LANES, L);                                               \
    }                                                                                                 \
  };
#define PYCONV_BLK_PANEL "128"  // bytes of a filter row (NR values)
#endif

#if defined(PYCONV_SIMD_AVX2) || defined(PYCONV_SIMD_AVX512)
// The kernels of both ISAs from one table. Lane l of a tap: the input at byte displacement
// l * sizeof(T) (SZ), the filter row at l * PYCONV_BLK_PANEL; PYCONV_BLK_LANESn unrolls n lanes.
#define PYCONV_BLK_LANE(l, SZ) PYCONV_BLK_STEP(#l "*" SZ, #l "*" PYCONV_BLK_PANEL)
#define PYCONV_BLK_LANES1(SZ) PYCONV_BLK_LANE(0, SZ)
#define PYCONV_BLK_LANES2(SZ) PYCONV_BLK_LANES1(SZ) PYCONV_BLK_LANE(1, SZ)
#define PYCONV_BLK_LANES3(SZ) PYCONV_BLK_LANES2(SZ) PYCONV_BLK_LANE(2, SZ)
#define PYCONV_BLK_LANES4(SZ) PYCONV_BLK_LANES3(SZ) PYCONV_BLK_LANE(3, SZ)
#define PYCONV_BLK_LANES5(SZ) PYCONV_BLK_LANES4(SZ) PYCONV_BLK_LANE(4, SZ)
#define PYCONV_BLK_LANES6(SZ) PYCONV_BLK_LANES5(SZ) PYCONV_BLK_LANE(5, SZ)
#define PYCONV_BLK_LANES7(SZ) PYCONV_BLK_LANES6(SZ) PYCONV_BLK_LANE(6, SZ)
#define PYCONV_BLK_LANES8(SZ) PYCONV_BLK_LANES7(SZ) PYCONV_BLK_LANE(7, SZ)
#define PYCONV_BLK_LANES9(SZ) PYCONV_BLK_LANES8(SZ) PYCONV_BLK_LANE(8, SZ)
#define PYCONV_BLK_LANES10(SZ) PYCONV_BLK_LANES9(SZ) PYCONV_BLK_LANE(9, SZ)
#define PYCONV_BLK_LANES11(SZ) PYCONV_BLK_LANES10(SZ) PYCONV_BLK_LANE(10, SZ)
#define PYCONV_BLK_LANES12(SZ) PYCONV_BLK_LANES11(SZ) PYCONV_BLK_LANE(11, SZ)
#define PYCONV_BLK_LANES13(SZ) PYCONV_BLK_LANES12(SZ) PYCONV_BLK_LANE(12, SZ)
#define PYCONV_BLK_LANES14(SZ) PYCONV_BLK_LANES13(SZ) PYCONV_BLK_LANE(13, SZ)
#define PYCONV_BLK_LANES15(SZ) PYCONV_BLK_LANES14(SZ) PYCONV_BLK_LANE(14, SZ)
#define PYCONV_BLK_LANES16(SZ) PYCONV_BLK_LANES15(SZ) PYCONV_BLK_LANE(15, SZ)
#define PYCONV_BLK_FOR(T, L, SZ) PYCONV_BLK_KERNEL(T, L, PYCONV_BLK_LANES##L(SZ))
#define PYCONV_SFX "ss"
#define PYCONV_P "s"
PYCONV_BLK_FOR(float, 1, "4") PYCONV_BLK_FOR(float, 2, "4") PYCONV_BLK_FOR(float, 3, "4")
PYCONV_BLK_FOR(float, 4, "4") PYCONV_BLK_FOR(float, 5, "4") PYCONV_BLK_FOR(float, 6, "4")
PYCONV_BLK_FOR(float, 7, "4") PYCONV_BLK_FOR(float, 8, "4")
#if defined(PYCONV_SIMD_AVX512)
PYCONV_BLK_FOR(float, 9, "4") PYCONV_BLK_FOR(float, 10, "4") PYCONV_BLK_FOR(float, 11, "4")
PYCONV_BLK_FOR(float, 12, "4") PYCONV_BLK_FOR(float, 13, "4") PYCONV_BLK_FOR(float, 14, "4")
PYCONV_BLK_FOR(float, 15, "4") PYCONV_BLK_FOR(float, 16, "4")
#endif
#undef PYCONV_SFX
#undef PYCONV_P
#define PYCONV_SFX "sd"
#define PYCONV_P "d"
PYCONV_BLK_FOR(double, 1, "8") PYCONV_BLK_FOR(double, 2, "8") PYCONV_BLK_FOR(double, 3, "8")
PYCONV_BLK_FOR(double, 4, "8")
#if defined(PYCONV_SIMD_AVX512)
PYCONV_BLK_FOR(double, 5, "8") PYCONV_BLK_FOR(double, 6, "8") PYCONV_BLK_FOR(double, 7, "8")
PYCONV_BLK_FOR(double, 8, "8")
#endif
#undef PYCONV_SFX
#undef PYCONV_P
#undef PYCONV_BLK_FOR
#undef PYCONV_BLK_LANE
#undef PYCONV_BLK_PANEL
#undef PYCONV_BLK_KERNEL
#undef PYCONV_BLK_STEP
#undef PYCONV_BLK_ROW
#undef PYCONV_BLK512_TILE
#undef PYCONV_BLK512_PUT
#undef PYCONV_BLK512_MOV
#undef PYCONV_BLK512_ZERO
#undef PYCONV_BLK512_MOVE
#undef PYCONV_BLK512_ASM
#endif

template <typename T>
using TileKernel = void (*)(const T* const*, const T*, const int64_t*, int64_t, T*, int64_t);

// The kernel for blocks of L lanes (1 <= L <= W).
template <typename T, int L = Simd<T>::W>
TileKernel<T> tile_kernel_for(int64_t lanes) {
  if constexpr (L > 1)
    if (lanes < L) return tile_kernel_for<T, L - 1>(lanes);
  return &BlkKernel<T, L>::run;
}

// A problem's (channel block, tap) pairs as byte offsets from a chunk's origin, in the filters'
// order: a whole chunk's table, then the last chunk's (as deltas closed by kTapEnd where
// kTapDeltas; the same table otherwise).
struct Taps {
  int64_t chunk;  // channel blocks a chunk (its filters stay in L1)
  const int64_t* offs;
  const int64_t* offs_last;
};

template <typename T>
int64_t taps_chunk(const Blocked& b) {
  return imin(b.Cb, imax(1, kChunkBytes / (b.s.R * b.s.S * b.L * 2 * Simd<T>::W * int64_t(sizeof(T)))));
}

// int64 values fill_taps writes.
template <typename T>
int64_t taps_numel(const Blocked& b) {
  return 2 * (taps_chunk<T>(b) * b.s.R * b.s.S + 1);
}

template <typename T>
Taps fill_taps(const Blocked& b, int64_t* offs) {
  const ConvShape& s = b.s;
  const int64_t RS = s.R * s.S, chunk = taps_chunk<T>(b);
  const int64_t pairs = chunk * RS, last_pairs = (b.Cb - (ceil_div(b.Cb, chunk) - 1) * chunk) * RS;
  for (int64_t cbi = 0; cbi < chunk; ++cbi)
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t c = 0; c < s.S; ++c)
        offs[(cbi * s.R + r) * s.S + c] =
            ((cbi * b.Hp + r * s.dil_h) * b.Wp + c * s.dil_w) * b.L * int64_t(sizeof(T));
  int64_t* offs_last = offs;
  if constexpr (kTapDeltas) {
    // dst[j] = offs[j] - offs[j-1] for j < n, then kTapEnd; from the top down, so dst may be offs
    auto deltas = [offs](int64_t n, int64_t* dst) {
      for (int64_t j = n - 1; j >= 0; --j) dst[j] = offs[j] - (j > 0 ? offs[j - 1] : 0);
      dst[n] = kTapEnd;
    };
    offs_last = offs + pairs + 1;
    deltas(last_pairs, offs_last);
    deltas(pairs, offs);
  }
  return Taps{chunk, offs, offs_last};
}

// A phase's tile rows [i0, i0 + len) (pixels pq0.. of image n) -> its pixels of gx, ysw apart in a
// row; element by element (the phase's W consecutive pixels are not contiguous in gx).
template <typename T>
void store_segment_phase(const Blocked& b, const T* tile, int64_t i0, int64_t len, int64_t n, int64_t pq0,
                         int64_t g, int64_t k0, int64_t kn, T* y) {
  constexpr int NR = 2 * Simd<T>::W;
  const int64_t Q = b.s.Q, plane = b.y_h * b.y_w, ysw = b.ysw;
  T* yk = y + ((n * b.s.G + g) * b.s.Kg() + k0) * plane;
  for (int64_t i = 0; i < len;) {
    const int64_t p = (pq0 + i) / Q, q = (pq0 + i) % Q, run = imin(Q - q, len - i);
    T* dst = yk + (p * b.ysh + b.y0h) * b.y_w + q * ysw + b.y0w;
    const T* src = tile + (i0 + i) * NR;
    for (int64_t l = 0; l < kn; ++l)
      for (int64_t j = 0; j < run; ++j) dst[l * plane + j * ysw] = src[j * NR + l];
    i += run;
  }
}

// Tile rows [i0, i0 + len) -> y[n, gK + k0 + l, pq0 + (0..len)] for the kn channels of the panel:
// W pixels x W channels at a time through a register transpose; then the bias, the statistics
// (before the epilogue, one partial per channel and pixel block) and the epilogue, while in cache.
template <typename T>
void store_segment(const Blocked& b, const T* tile, int64_t i0, int64_t len, int64_t n, int64_t pq0, int64_t g,
                   int64_t k0, int64_t kn, const T* bias, T* y, double* part, const ConvEpilogue<T>& ep) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W, NR = 2 * W;
  if (b.phase) return store_segment_phase(b, tile, i0, len, n, pq0, g, k0, kn, y);
  const int64_t Kg = b.s.Kg();
  T* yk = y + ((n * b.s.G + g) * Kg + k0) * b.PQ + pq0;
  const T* tl = tile + i0 * NR;
  for (int h = 0; h * W < kn; ++h) {
    const int64_t kh = imin(W, kn - h * W);
    int64_t i = 0;
    for (; i + W <= len; i += W) {
      V r[W];
      for (int m = 0; m < W; ++m) r[m] = vload(tl + (i + m) * NR + h * W);
      vtranspose(r);
      for (int l = 0; l < kh; ++l) vstore(yk + (h * W + l) * b.PQ + i, r[l]);
    }
    for (; i < len; ++i)
      for (int l = 0; l < kh; ++l) yk[(h * W + l) * b.PQ + i] = tl[i * NR + h * W + l];
  }
  for (int64_t l = 0; l < kn; ++l) {
    T* yl = yk + l * b.PQ;
    if (bias) {
      const T bk = bias[g * Kg + k0 + l];
      const V bv = vbroadcast(bk);
      int64_t i = 0;
      for (; i + W <= len; i += W) vstore(yl + i, vload(yl + i) + bv);
      for (; i < len; ++i) yl[i] += bk;
    }
    if (part) {
      double sums[2];
      sum_pair(yl, yl, static_cast<const T*>(nullptr), 0.0, 0.0, len, sums);
      part[2 * (g * Kg + k0 + l)] += sums[0], part[2 * (g * Kg + k0 + l) + 1] += sums[1];
    }
    epilogue_apply(ep, yl, len);
  }
}

// Elements of a thread's scratch for run_task: the [pixel][NR] tile, then its pixels' input
// offsets (int64).
template <typename T>
constexpr int64_t task_scratch_elems() {
  return kBlockPixels * 2 * Simd<T>::W + kBlockPixels * int64_t(sizeof(int64_t) / sizeof(T));
}

// One task: output pixels [pix0, pix0 + npix) of the batch (images follow each other), output
// channels [kp*NR, kp*NR + NR) of group g. The filter chunk in L1 serves every image of the block.
template <typename T>
void run_task(const Blocked& b, const T* xb, const T* wb, const T* bias, T* y, double* part, const ConvEpilogue<T>& ep,
              const Taps& taps, int64_t g, int64_t kp, int64_t blk, T* tile) {
  constexpr int W = Simd<T>::W, NR = 2 * W;
  const ConvShape& s = b.s;
  const int64_t RS = s.R * s.S, cb_stride = b.Hp * b.Wp * b.L, cb_filters = RS * b.L * NR;
  const int64_t pix0 = blk * b.blk_pixels, npix = imin(b.blk_pixels, s.N * b.PQ - pix0);
  // the first chunk's kernel calls start their tiles from zero
  // each pixel's input origin in xb, counted forward (no divisions per register tile)
  // (sizes in locals: the stores to pixel_at could alias b's fields, which the loop would reload)
  int64_t* pixel_at = reinterpret_cast<int64_t*>(tile + kBlockPixels * NR);
  const int64_t P = s.P, Q = s.Q, step = s.stride_w * b.L, row_step = s.stride_h * b.Wp * b.L, image = b.image();
  for (int64_t i = 0, n = pix0 / b.PQ, p = pix0 % b.PQ / Q; i < npix;) {
    const int64_t q0 = (pix0 + i) % Q, len = imin(Q - q0, npix - i);
    int64_t at = b.origin + n * image + p * row_step + q0 * step;
    for (int64_t j = 0; j < len; ++j, at += step) pixel_at[i + j] = at;
    i += len;
    if (++p == P) p = 0, ++n;
  }
  const TileKernel<T> kernel = tile_kernel_for<T>(b.L);
  const T* xg = xb + g * b.Cb * cb_stride;
  const T* wk = wb + (g * b.Kp + kp) * b.Cb * cb_filters;
  const int64_t chunk = taps.chunk;
  for (int64_t cb0 = 0; cb0 < b.Cb; cb0 += chunk) {
    const int64_t ncb = imin(chunk, b.Cb - cb0);
    const T* wc = wk + cb0 * cb_filters;
    const T* xc = xg + cb0 * cb_stride;
    // the next chunk's filters, a slice per register tile: with few pixels (a 7x7 image: 9 tiles)
    // the first tile of a chunk would otherwise wait on them from L3
    const char* next = reinterpret_cast<const char*>(wc + ncb * cb_filters);
    const int64_t next_lines = cb0 + ncb < b.Cb ? imin(chunk, b.Cb - cb0 - ncb) * cb_filters * int64_t(sizeof(T)) / 64 : 0;
    const int64_t per_tile = ceil_div(next_lines, ceil_div(npix, kMR));
    for (int64_t u0 = 0; u0 < npix; u0 += kMR) {
      const T* px[kMR];
      for (int u = 0; u < kMR; ++u) px[u] = xc + pixel_at[imin(u0 + u, npix - 1)];  // a short last tile repeats a pixel
      for (int64_t l = u0 / kMR * per_tile; l < imin(next_lines, (u0 / kMR + 1) * per_tile); ++l)
        __builtin_prefetch(next + l * 64);
      kernel(px, wc, cb0 + ncb == b.Cb ? taps.offs_last : taps.offs, ncb * RS, tile + u0 * NR, cb0 == 0);
    }
  }
  const int64_t k0 = kp * NR, kn = imin(NR, s.Kg() - k0);
  double* pb = part ? part + 2 * s.K * blk : nullptr;
  for (int64_t i0 = 0; i0 < npix;) {
    const int64_t pix = pix0 + i0, pq0 = pix % b.PQ, len = imin(npix - i0, b.PQ - pq0);
    store_segment(b, tile, i0, len, pix / b.PQ, pq0, g, k0, kn, bias, y, pb, ep);
    i0 += len;
  }
}

// grad-input of a strided convolution (dilation 1, R >= sh, S >= sw) by phases (the sub-pixel
// decomposition of a transposed convolution): gx's rows i = a*sh + e (e < sh) take only the forward
// taps r = r0 + sh*t, r0 = (e + ph) mod sh, from gy's rows p = a + d - t, d = (e + ph - r0) / sh.
// So each phase (e, f) of gx is a stride-1 convolution of gy with ceil((R - r0)/sh) x
// ceil((S - c0)/sw) taps of the rotated, channel-transposed filters, padding taps - 1 - d: the
// blocked forward's kernel at its stride-1 rate, the same FLOPs as the layer's forward, and every
// pixel of gx written once (im2col's grad-input computes R*S columns per input pixel and adds them
// back with col2im). The phases read one blocked copy of gy, padded for the phase that reaches
// furthest, and write their pixels into gx sh rows and sw columns apart.
template <typename T>
void backward_input_phased(const ConvShape& s, const T* gy, const T* w, T* gx) {
  struct Axis {
    int64_t r0, taps, pad, out;
  };
  auto axis = [](int64_t e, int64_t pad, int64_t st, int64_t k, int64_t in) {
    const int64_t r0 = (e + pad) % st, taps = ceil_div(k - r0, st), d = (e + pad - r0) / st;
    return Axis{r0, taps, taps - 1 - d, in > e ? ceil_div(in - e, st) : 0};
  };
  const int nthr = num_threads();
  ConvShape t = s;  // gy -> gx: the forward's outputs are the inputs
  t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.stride_h = t.stride_w = 1;
  std::vector<Blocked> phases;
  std::vector<TapDest> dest(s.R * s.S, TapDest{-1, 0});
  for (int64_t e = 0; e < s.stride_h; ++e)
    for (int64_t f = 0; f < s.stride_w; ++f) {
      const Axis ah = axis(e, s.pad_h, s.stride_h, s.R, s.H), aw = axis(f, s.pad_w, s.stride_w, s.S, s.W);
      if (ah.out == 0 || aw.out == 0) continue;
      ConvShape u = t;
      u.R = ah.taps, u.S = aw.taps, u.P = ah.out, u.Q = aw.out, u.pad_h = ah.pad, u.pad_w = aw.pad;
      Blocked b = plan<T>(u);
      b.phase = true, b.y_h = s.H, b.y_w = s.W, b.ysh = s.stride_h, b.ysw = s.stride_w, b.y0h = e, b.y0w = f;
      split_pixels(b, nthr);
      // its taps (t, v) are the forward's (r0h + sh*(R' - 1 - t), r0w + sw*(S' - 1 - v)): rotated
      for (int64_t tt = 0; tt < u.R; ++tt)
        for (int64_t v = 0; v < u.S; ++v)
          dest[(ah.r0 + s.stride_h * (u.R - 1 - tt)) * s.S + aw.r0 + s.stride_w * (u.S - 1 - v)] =
              TapDest{int64_t(phases.size()), tt * u.S + v};
      phases.push_back(b);
    }
  // one blocked gy for every phase: the largest padding before, the furthest reach after
  int64_t ph = phases[0].s.pad_h, pw = phases[0].s.pad_w, Hp = 0, Wp = 0;
  for (const Blocked& b : phases) ph = imax(ph, b.s.pad_h), pw = imax(pw, b.s.pad_w);
  for (const Blocked& b : phases) Hp = imax(Hp, ph - b.s.pad_h + b.Hp), Wp = imax(Wp, pw - b.s.pad_w + b.Wp);
  std::vector<int64_t> wofs{0}, tofs{0}, first{0};
  for (Blocked& b : phases) {
    b.origin = ((ph - b.s.pad_h) * Wp + pw - b.s.pad_w) * b.L;
    b.Hp = Hp, b.Wp = Wp;
    wofs.push_back(wofs.back() + filters_numel<T>(b));
    tofs.push_back(tofs.back() + taps_numel<T>(b));
    first.push_back(first.back() + b.s.G * b.Kp * b.nblk);
  }
  Blocked padded = phases[0];  // what block_input reads: gy's size, the common padding
  padded.s.pad_h = ph, padded.s.pad_w = pw;
  Workspace xbw(checked_bytes(s.N * padded.image(), sizeof(T)));
  Workspace wbw(checked_bytes(wofs.back(), sizeof(T)));
  Workspace offw(checked_bytes(tofs.back(), sizeof(int64_t)));
  std::vector<Taps> taps;
  for (size_t f = 0; f < phases.size(); ++f) taps.push_back(fill_taps<T>(phases[f], offw.as<int64_t>() + tofs[f]));
  const int64_t tile_elems = task_scratch_elems<T>();
  Workspace tiles(checked_bytes(nthr * tile_elems, sizeof(T)));
  std::vector<const Blocked*> bs;
  std::vector<T*> wbs;
  for (size_t f = 0; f < phases.size(); ++f) bs.push_back(&phases[f]), wbs.push_back(wbw.as<T>() + wofs[f]);
  const ConvEpilogue<T> none{};
  // Phases differ in taps (a 3x3 stride 2: 4, 2, 2, 1): tasks are handed out as threads free up.
#pragma omp parallel num_threads(nthr)
  {
    block_input(padded, gy, xbw.as<T>());
    block_filters_transposed(bs.data(), wbs.data(), dest.data(), int64_t(phases.size()), s.Kg(), s.Cg(), s.R * s.S, w);
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < first.back(); ++task) {
      size_t f = 0;
      while (task >= first[f + 1]) ++f;
      const Blocked& b = phases[f];
      const int64_t i = task - first[f], kp = i % b.Kp, blk = i / b.Kp % b.nblk, g = i / (b.Kp * b.nblk);
      run_task(b, xbw.as<T>(), wbw.as<T>() + wofs[f], static_cast<const T*>(nullptr), gx, nullptr, none, taps[f], g,
               kp, blk, tiles.as<T>() + omp_get_thread_num() * tile_elems);
    }
  }
}

}  // namespace

template <typename T>
int conv_blocked_min_channels() {
  return Simd<T>::W;
}

template <typename T>
bool conv_blocked_applies(const ConvShape& s) {
  return s.Kg() >= conv_blocked_min_channels<T>();
}

template <typename T>
int64_t conv_blocked_prepared_numel(const ConvShape& s) {
  return kPreparedHeader + filters_numel<T>(plan<T>(s));
}

template <typename T>
void conv_blocked_prepare_weight(const ConvShape& s, const T* w, T* prepared) {
  for (int64_t e = 0; e < kPreparedHeader; ++e) prepared[e] = T(0);
  prepared[0] = T(s.Kg()), prepared[1] = T(s.Cg()), prepared[2] = T(s.R), prepared[3] = T(s.S);
  prepared[4] = T(s.G), prepared[5] = T(Simd<T>::W);
  const Blocked b = plan<T>(s);
#pragma omp parallel num_threads(num_threads())
  block_filters(b, w, prepared + kPreparedHeader);
}

template <typename T>
bool conv_blocked_prepared_fits(const ConvShape& s, const T* prepared) {
  return prepared[0] == T(s.Kg()) && prepared[1] == T(s.Cg()) && prepared[2] == T(s.R) && prepared[3] == T(s.S) &&
         prepared[4] == T(s.G) && prepared[5] == T(Simd<T>::W);
}

template <typename T>
void conv_blocked_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y, double* stats,
                          const T* prepared, const ConvEpilogue<T>& ep) {
  if (stats)
    for (int64_t i = 0; i < 2 * s.K; ++i) stats[i] = 0;
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return;
  const int nthr = num_threads();
  Blocked b = plan<T>(s);
  split_pixels(b, nthr);
  Workspace xbw(checked_bytes(s.N * b.image(), sizeof(T)));
  Workspace wbw(prepared ? 0 : checked_bytes(filters_numel<T>(b), sizeof(T)));
  const T* wb = prepared ? prepared + kPreparedHeader : wbw.as<T>();
  Workspace offw(checked_bytes(taps_numel<T>(b), sizeof(int64_t)));
  const Taps taps = fill_taps<T>(b, offw.as<int64_t>());
  Workspace partw(stats ? checked_bytes(2 * s.K * b.nblk, sizeof(double)) : 0);
  double* part = stats ? partw.as<double>() : nullptr;
  const int64_t tile_elems = task_scratch_elems<T>();
  Workspace tiles(checked_bytes(nthr * tile_elems, sizeof(T)));
  if (part)  // a block may hold several segments of a channel: they add up in its partial
    for (int64_t i = 0; i < 2 * s.K * b.nblk; ++i) part[i] = 0;
  const int64_t tasks = s.G * b.Kp * b.nblk;
  // Tasks run panels inner: a pixel block's input is read by every panel while it is in cache, and
  // the filters once per block (nblk x the filters; the other order reads the whole blocked input
  // once per panel, Kp x the input, more on every layer but those of kernels past 60 taps (float): a
  // 3x3 filter per 960-pixel block is 1/7 of its input). A stride-2 layer has 4 input pixels per
  // output pixel: ResNet-50's 128-channel 56x56 -> 28x28 layer at batch 8 re-read 8 x 14 MB a call
  // panels outer, and went from 1.42x im2col's time to 1.05x (min of 6 alternating runs);
  // MobileNetV2's stem at batch 8 1.38x -> 1.16x.
  // one parallel region: reorders (the input, and the filters unless prepared), one barrier, tasks
#pragma omp parallel num_threads(nthr)
  {
    block_input(b, x, xbw.as<T>());
    if (!prepared) block_filters(b, w, wbw.as<T>());
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t kp = t % b.Kp, blk = t / b.Kp % b.nblk, g = t / (b.Kp * b.nblk);
      run_task(b, xbw.as<T>(), wb, bias, y, part, ep, taps, g, kp, blk,
               tiles.as<T>() + omp_get_thread_num() * tile_elems);
    }
  }
  if (stats) add_channel_partials(part, b.nblk, s.K, 1, stats);  // one partial a (block, channel)
}

template <typename T>
bool conv_blocked_backward_input_applies(const ConvShape& s) {
  // its output channels are the forward's inputs: a narrow forward would fill 3 of 16 panel columns;
  // strided layers by phases, each with at least one tap
  const bool stride1 = s.stride_h == 1 && s.stride_w == 1;
  const bool phased = s.dil_h == 1 && s.dil_w == 1 && s.R >= s.stride_h && s.S >= s.stride_w;
  return (stride1 || phased) && s.Cg() >= conv_blocked_min_channels<T>() && s.Kg() >= conv_blocked_min_channels<T>();
}

// grad-input of a stride-1 convolution = a forward convolution of gy (K channels) with the rotated,
// channel-transposed filters, padding dil*(R-1) - pad (negative: crop), dilation kept; strided
// layers by phases (backward_input_phased).
template <typename T>
void conv_blocked_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  if (s.N == 0 || s.C == 0 || s.H == 0 || s.W == 0) return;
  ConvShape t = s;
  t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.P = s.H, t.Q = s.W;
  t.pad_h = s.dil_h * (s.R - 1) - s.pad_h, t.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
  if (s.K == 0 || s.P == 0 || s.Q == 0) {
    for (int64_t e = 0; e < s.N * s.C * s.H * s.W; ++e) gx[e] = T(0);
    return;
  }
  if (s.stride_h > 1 || s.stride_w > 1) return backward_input_phased(s, gy, w, gx);
  const Blocked b = plan<T>(t);
  Workspace wt(checked_bytes(kPreparedHeader + filters_numel<T>(b), sizeof(T)));
  std::vector<TapDest> dest(s.R * s.S);  // rotated 180 degrees
  for (int64_t f = 0; f < s.R * s.S; ++f) dest[f] = TapDest{0, s.R * s.S - 1 - f};
  const Blocked* bs[1] = {&b};
  T* wbs[1] = {wt.as<T>() + kPreparedHeader};
#pragma omp parallel num_threads(num_threads())
  block_filters_transposed(bs, wbs, dest.data(), 1, s.Kg(), s.Cg(), s.R * s.S, w);
  conv_blocked_forward(t, gy, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), gx, nullptr,
                       wt.as<T>(), ConvEpilogue<T>{});
}

#define PYCONV_INSTANTIATE(T)                                                                       \
  template bool conv_blocked_applies<T>(const ConvShape&);                                         \
  template int conv_blocked_min_channels<T>();                                                       \
  template bool conv_blocked_backward_input_applies<T>(const ConvShape&);                          \
  template void conv_blocked_backward_input<T>(const ConvShape&, const T*, const T*, T*);           \
  template int64_t conv_blocked_prepared_numel<T>(const ConvShape&);                                 \
  template void conv_blocked_prepare_weight<T>(const ConvShape&, const T*, T*);                      \
  template bool conv_blocked_prepared_fits<T>(const ConvShape&, const T*);                           \
  template void conv_blocked_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, double*, \
                                        const T*, const ConvEpilogue<T>&);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
