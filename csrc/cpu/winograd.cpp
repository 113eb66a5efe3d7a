// Winograd convolution F(m x m, 3 x 3), m in {2, 4}, NCHW, float32 / float64 (Lavin & Gray 2016).
//
// The output is cut into m x m tiles; tile (n, ti, tj) reads the alpha x alpha input patch
// d = x[n, c, ti*m - pad_h + [0, alpha), tj*m - pad_w + [0, alpha)] (zero outside), alpha = m + 2:
//
//   forward      Y_tile[k] = A^T [ sum_c U[k,c] . V[c] ] A,   U = G g[k,c] G^T,  V = B^T d B
//                (. is elementwise: alpha^2 independent GEMMs [K x C] x [C x tiles] per group)
//   grad-input   a stride-1 convolution of gy with the rotated, channel-transposed filter and padding
//                2 - pad (negative = crop), run through the forward path
//   grad-weight  the adjoint: dg[k,c] = G^T [ sum_{n,tiles} (A dY_tile[k] A^T) . V[c] ] G
//                (alpha^2 GEMMs [K x tiles] x [tiles x C]);  grad-bias gb[k] = sum_{n,p,q} gy[n,k,p,q]
//
// Matrices: csrc/common/winograd_matrices.h, generated from the table WINOGRAD in pyconv/problem.py
// (Toom-Cook on the points there plus infinity, B^T scaled to integers, the scale moved into G).
// F(4x4)'s points 0, 1, -1, 1/2, -2 measured 2x lower float32 error than 0, +-1, +-2 or 0, +-1, +-1/2.
//
// Layout and loop order. Filters are transformed once per call into packed A panels
// U[g][xi][kb][c][MR] (xi = position in the alpha x alpha tile, K zero-padded to MR). Threads take
// blocks of NB tiles: the block's input is transformed (vectorized across tiles) straight into
// packed B panels V[xi][NB/NR][c][NR], which stay in cache, the shared GEMM micro-kernel
// (gemm_driver.h) multiplies U panels by V panels into MR x NR tiles of M, and the output transform
// writes Y. No full transformed-input tensor exists.
#include "cpu/winograd.h"

#include "common/runtime.h"
#include "common/winograd_matrices.h"
#include "cpu/epilogue.h"
#include "cpu/gemm_driver.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

#include <omp.h>

#include <algorithm>
#include <optional>

namespace pyconv {
namespace PYCONV_ISA {
namespace {

template <int M>
struct WinogradTile;

// B^T, G, A^T as constexpr arrays: mul_left / mul_right unroll over them, and axpy_const folds
// every coefficient.
#define PYCONV_WINOGRAD_TILE(M)                                           \
  template <>                                                             \
  struct WinogradTile<M> {                                                \
    static constexpr int alpha = PYCONV_WINOGRAD_F##M##_ALPHA;            \
    static constexpr double BT[alpha][alpha] = PYCONV_WINOGRAD_F##M##_BT; \
    static constexpr double G[alpha][3] = PYCONV_WINOGRAD_F##M##_G;       \
    static constexpr double AT[M][alpha] = PYCONV_WINOGRAD_F##M##_AT;     \
  };
PYCONV_WINOGRAD_TILE(2)
PYCONV_WINOGRAD_TILE(4)
#undef PYCONV_WINOGRAD_TILE

// Adds c * v, with the multiplications by 0 and +-1 resolved at compile time once the loops
// over the constant matrices are unrolled.
template <typename S, typename V>
PYCONV_INLINE void axpy_const(V& acc, double c, V v) {
  if (c == 1.0)
    acc += v;
  else if (c == -1.0)
    acc -= v;
  else if (c != 0.0)
    acc += S(c) * v;
}

// out[i][j] = sum_k X[i][k] in[k][j], X = Mx or Mx^T (Tr); in is [K][J], out [I][J].
template <bool Tr, int J, typename S, typename V, int R0, int R1>
PYCONV_INLINE void mul_left(const double (&Mx)[R0][R1], const V* in, V* out) {
  constexpr int I = Tr ? R1 : R0, K = Tr ? R0 : R1;
#pragma GCC unroll 8
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      V acc{};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) axpy_const<S>(acc, Tr ? Mx[k][i] : Mx[i][k], in[k * J + j]);
      out[i * J + j] = acc;
    }
}

// out[i][j] = sum_k in[i][k] X[k][j], X = Mx or Mx^T (Tr); in is [I][K], out [I][J].
template <bool Tr, int I, typename S, typename V, int R0, int R1>
PYCONV_INLINE void mul_right(const double (&Mx)[R0][R1], const V* in, V* out) {
  constexpr int K = Tr ? R1 : R0, J = Tr ? R0 : R1;
#pragma GCC unroll 8
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      V acc{};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) axpy_const<S>(acc, Tr ? Mx[j][k] : Mx[k][j], in[i * K + k]);
      out[i * J + j] = acc;
    }
}

// ---- Products ----------------------------------------------------------------------------------
// Every per-position product runs on the shared GEMM micro-kernel of gemm_driver.h: an MR x NR tile
// from a packed A panel [len][MR] and a packed B panel [len][NR]. The transforms write their results
// straight in panel layout, so the products need no packing pass.
template <typename T>
constexpr int kMR = GemmBlocking<T>::MR;
template <typename T>
constexpr int kNR = GemmBlocking<T>::NR;

// The stride between the alpha^2 positions of every transformed buffer: `elems` rounded up to an
// odd number of cache lines. The transforms touch all 16 or 36 positions at once; at a power-of-two
// stride (16 channels x 64 tiles = 4 KiB, 128 x 132 transformed filter gradients = 16.5 x 4 KiB)
// those lines share one or two sets of the 8-way L1 and L2 and evict each other on every vector
// (grad-weight's final G^T dU G spent 65% of the op there); an odd number of lines walks every set.
template <typename T>
int64_t position_stride(int64_t elems) {
  constexpr int64_t line = 64 / sizeof(T);
  const int64_t lines = ceil_div(elems, line);
  return (lines | 1) * line;
}

// Where element (position xi, row r, tile t) of a block of NB tiles lives in a transformed block:
// (xi, r, t) -> xi*xi_stride + (t / NR)*panel_stride + r*row_stride + t % NR. Panel layout (the
// micro-kernel's B operand) has row_stride NR; row layout [xi][rows][NB] has row_stride NB.
struct BlockLayout {
  int64_t xi_stride, panel_stride, row_stride;
  template <typename T>
  static BlockLayout panels(int64_t rows, int64_t NB) {
    return {position_stride<T>(rows * NB), rows * kNR<T>, kNR<T>};
  }
  template <typename T>
  static BlockLayout rows(int64_t rows, int64_t NB) {
    return {position_stride<T>(rows * NB), kNR<T>, NB};
  }
  template <typename T>
  int64_t at(int64_t xi, int64_t r, int64_t t) const {
    return xi * xi_stride + t / kNR<T> * panel_stride + r * row_stride + t % kNR<T>;
  }
};

// ---- Problem description -------------------------------------------------------------------------
// A stride-1 3x3 convolution per group: Cin -> Kout channels, input H x W, output P x Q, top/left
// padding (may be negative: grad-input crops).
struct Conv {
  int64_t N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w;
};

// The transformed filters U[g][xi][kb][c][MR]: one position's Kout (padded to MR) x Cin panels, and
// the stride between positions (the transform, the products and the prepared size all use it).
template <typename T>
int64_t filter_position_stride(const Conv& c) {
  return position_stride<T>(ceil_div(c.Kout, kMR<T>) * kMR<T> * c.Cin);
}

template <int M>
struct Tiling {
  int64_t th, tw, tiles;  // tiles per column / row of one image, total over the batch
  explicit Tiling(const Conv& c) : th(ceil_div(c.P, M)), tw(ceil_div(c.Q, M)), tiles(c.N * th * tw) {}
};

// Where each of the W tiles starting at tile t0 lies: image, output row/col origin; n = -1 past the end.
template <int M, int W>
struct LaneTiles {
  int64_t n[W], p0[W], q0[W];
  LaneTiles(const Tiling<M>& tl, int64_t t0) {
    for (int l = 0; l < W; ++l) {
      const int64_t t = t0 + l;
      if (t >= tl.tiles) {
        n[l] = -1, p0[l] = q0[l] = 0;
        continue;
      }
      n[l] = t / (tl.th * tl.tw);
      p0[l] = (t / tl.tw) % tl.th * M;
      q0[l] = t % tl.tw * M;
    }
  }
};

// The W lanes as M groups of G = W/M (one vinterleave_rows vector each), each group cut into runs
// of tiles side by side in one tile row of one image: a run's row is consecutive columns, so it
// is one masked load or store at its first tile's address minus the run's first lane (u * M).
template <int M, int W>
struct LaneRuns {
  static constexpr int G = W / M;
  int count[M];                           // runs in group q
  int lane0[M][G], tiles[M][G], tile[M][G];  // a run's first lane, its tiles, its first tile (lane)
  explicit LaneRuns(const LaneTiles<M, W>& lt) {
    for (int q = 0; q < M; ++q) {
      count[q] = 0;
      for (int u = 0; u < G; ++u) {
        const int l = q * G + u;
        if (lt.n[l] < 0) continue;  // past the last tile: no run, its lanes read 0 and are not stored
        const int r = count[q] - 1;
        if (r >= 0 && tile[q][r] + tiles[q][r] == l && lt.n[l] == lt.n[l - 1] && lt.p0[l] == lt.p0[l - 1] &&
            lt.q0[l] == lt.q0[l - 1] + M) {
          ++tiles[q][r];
          continue;
        }
        lane0[q][count[q]] = u * M, tiles[q][count[q]] = 1, tile[q][count[q]] = l;
        ++count[q];
      }
    }
  }
};

// The runs of a unit on the output side (the output transform's stores, grad-weight's loads of gy;
// planes P x Q): per run, its lanes whose columns lie inside the output, its first tile's offset
// minus its first lane, and its rows inside the output; `whole`: the group is one run of G tiles
// with every column inside, one plain vector.
template <typename T, int M, int W>
struct OutputRuns {
  static constexpr int G = W / M;
  int count[M];
  LaneMask<T> mask[M][G];
  int64_t ofs[M][G], rows[M][G];
  bool whole[M];
  OutputRuns(const LaneTiles<M, W>& lt, const int64_t* tile_ofs, const int64_t* tile_rows, int64_t Q) {
    const LaneRuns<M, W> lr(lt);
    for (int q = 0; q < M; ++q) {
      count[q] = lr.count[q], whole[q] = false;
      for (int r = 0; r < lr.count[q]; ++r) {
        const int l = lr.tile[q][r], a = lr.lane0[q][r], b = a + lr.tiles[q][r] * M;
        mask[q][r] = LaneMask<T>(a, imin(b, a + Q - lt.q0[l]));
        ofs[q][r] = tile_ofs[l] - a, rows[q][r] = tile_rows[l];
        whole[q] = lr.count[q] == 1 && b - a == W && Q - lt.q0[l] >= W;
      }
    }
  }
};

// Filters of group g to packed panels U[xi][kb][c][MR] (kb over ceil(Kout/MR) blocks, zero past Kout).
// `transposed` reads grad-input's filter: output channel = forward input channel, rotated 180 degrees.
// Vectorized across W (k, c) pairs taken in panel order (c major, the MR rows of kb minor), so each
// position's result is one contiguous vector store. A pair's 9 taps are contiguous in w: W masked
// row loads and a register transpose give the taps lane-wise (per W taps). Gathering them element by
// element and scattering every result with stride MR ran at 8 GB/s, compute bound even in L2: U is
// 16 MiB at 512 x 512 channels, 2.1 ms (more than the products on ResNet's 7 x 7 layers).
template <typename T, int M>
void transform_filters(const Conv& c, const T* w, bool transposed, T* U) {
  using Vec = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int A = WinogradTile<M>::alpha;
  constexpr int MR = kMR<T>;
  constexpr int TAP_CHUNKS = (9 + W - 1) / W;  // loads per pair: 1 (16 floats), 2 (8), 3 (4 doubles)
  static const T zeros[9] = {};                 // the taps of a row past Kout or a channel past Cin
  const int64_t nkb = ceil_div(c.Kout, MR), ncb = ceil_div(c.Cin, W), us = filter_position_stride<T>(c);
  const int64_t k_step = transposed ? 9 : c.Cin * 9, c_step = transposed ? c.Kout * 9 : 9;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < c.G * nkb * ncb; ++task) {
    const int64_t g = task / (nkb * ncb), kb = task / ncb % nkb, c0 = task % ncb * W;
    const int64_t pairs = imin(W, c.Cin - c0) * MR;  // panel elements [c0 * MR, c0 * MR + pairs)
    const T* wg = w + g * c.Kout * c.Cin * 9;
    T* panel = U + g * A * A * us + kb * c.Cin * MR + c0 * MR;
    for (int64_t e0 = 0; e0 < pairs; e0 += W) {
      const T* tap0[W];
      for (int l = 0; l < W; ++l) {
        const int64_t e = e0 + l, k = kb * MR + e % MR, ci = c0 + e / MR;
        tap0[l] = e < pairs && k < c.Kout ? wg + k * k_step + ci * c_step : zeros;
      }
      Vec fv[9], tmp[A * 3], u[A * A];
      for (int q = 0; q < TAP_CHUNKS; ++q) {
        const LaneMask<T> taps(0, 9 - q * W);
        Vec r[W];
        for (int l = 0; l < W; ++l) r[l] = vload_masked(tap0[l] + q * W, taps);
        vtranspose(r);
        for (int j = 0; j < W && q * W + j < 9; ++j) fv[q * W + j] = r[j];
      }
      if (transposed)
        for (int rs = 0; rs < 4; ++rs) std::swap(fv[rs], fv[8 - rs]);
      mul_left<false, 3, T>(WinogradTile<M>::G, fv, tmp);
      mul_right<true, A, T>(WinogradTile<M>::G, tmp, u);
      const int64_t n = imin(W, pairs - e0);
      for (int xi = 0; xi < A * A; ++xi) {
        T* dst = panel + xi * us + e0;
        if (n == W)
          vstore(dst, u[xi]);
        else
          vstore_masked(dst, u[xi], LaneMask<T>(0, n));
      }
    }
  }
}

// V(xi, ci - c0, t) = B^T d B for the NB tiles from t0 (zero past the last tile), channels [c0, c1)
// of group g.
template <typename T, int M>
void transform_input_block(const Conv& c, const Tiling<M>& tl, const T* x, int64_t g, int64_t t0, int64_t NB,
                           int64_t c0, int64_t c1, const BlockLayout& layout, T* V) {
  using Vec = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int A = WinogradTile<M>::alpha;
  // Lanes are tiles: each tile's input row is loaded as vectors (CW columns) and W rows of W tiles
  // are transposed in registers (a lane's scalar gather, 2*A*A moves a tile, was ~40% of a 64-channel
  // layer's forward). A lane whose row would leave the plane loads the columns inside it, masked.
  // Where each lane reads is fixed for the block: row offsets and column masks are worked out once
  // per W tiles, not per channel (per lane and row inside the channel loop they were about half the
  // transform's instructions).
  constexpr int CW = (A + W - 1) / W * W, NCB = CW / W;
  constexpr int G = W / M;  // (kInterleaveRows) tiles per group
  for (int64_t ch = 0; ch < NB / W; ++ch) {
    const LaneTiles<M, W> lt(tl, t0 + ch * W);
    if constexpr (kInterleaveRows<T, M>) {
      // A group's window row is two vectors of consecutive columns (its tiles' first M columns,
      // and their last A - M from column A - M on): one masked load per run of tiles side by side
      // (the whole group on 32- and 16-wide planes with F(4x4)), the plane's padding and other
      // runs' lanes left 0, then vdeinterleave_rows gives one vector per column. No per-lane loads,
      // masks or register transpose.
      const LaneRuns<M, W> lr(lt);
      int64_t base[A][M][G];  // run (q, r)'s window row i in channel c0's plane, minus its first lane
      bool row_in[A][M][G];   // the row exists (else zeros)
      LaneMask<T> mlo[M][G], mhi[M][G];  // the run's lanes whose columns lie in the plane
      for (int q = 0; q < M; ++q)
        for (int r = 0; r < lr.count[q]; ++r) {
          const int l = lr.tile[q][r], a = lr.lane0[q][r], b = a + lr.tiles[q][r] * M;
          const int64_t y0 = lt.p0[l] - c.pad_h, x0 = lt.q0[l] - c.pad_w, xh = x0 + (A - M);
          mlo[q][r] = LaneMask<T>(imax(a, a - x0), imin(b, a + c.W - x0));
          mhi[q][r] = LaneMask<T>(imax(a, a - xh), imin(b, a + c.W - xh));
          for (int i = 0; i < A; ++i) {
            row_in[i][q][r] = y0 + i >= 0 && y0 + i < c.H;
            base[i][q][r] = ((lt.n[l] * c.G + g) * c.Cin + c0) * c.H * c.W + (y0 + i) * c.W + x0 - a;
          }
        }
      int64_t v_ofs[A * A];
      for (int xi = 0; xi < A * A; ++xi) v_ofs[xi] = layout.at<T>(xi, 0, ch * W);
      for (int64_t ci = c0; ci < c1; ++ci) {
        Vec dv[A * A], tmp[A * A], v[A * A];
        const T* xc = x + (ci - c0) * c.H * c.W;
        for (int i = 0; i < A; ++i) {
          Vec lo[M], hi[M], dlo[M], dhi[M];
          for (int q = 0; q < M; ++q) {
            lo[q] = hi[q] = Vec{};
            for (int r = 0; r < lr.count[q]; ++r) {
              if (!row_in[i][q][r]) continue;
              lo[q] = vload_merge(lo[q], xc + base[i][q][r], mlo[q][r]);
              hi[q] = vload_merge(hi[q], xc + base[i][q][r] + (A - M), mhi[q][r]);
            }
          }
          vdeinterleave_rows<M>(lo, dlo);
          vdeinterleave_rows<M>(hi, dhi);
          for (int j = 0; j < M; ++j) dv[i * A + j] = dlo[j];
          for (int j = M; j < A; ++j) dv[i * A + j] = dhi[j - (A - M)];
        }
        mul_left<false, A, T>(WinogradTile<M>::BT, dv, tmp);
        mul_right<true, A, T>(WinogradTile<M>::BT, tmp, v);
        for (int xi = 0; xi < A * A; ++xi) vstore(V + v_ofs[xi] + (ci - c0) * layout.row_stride, v[xi]);
      }
      continue;
    }
    int64_t row_ofs[A][W];      // row i of lane l's window in channel c0's plane (0: none)
    bool whole[A][W];           // the CW columns lie inside the row
    bool inside[A][W];          // the row exists (else zeros)
    LaneMask<T> cols[NCB][W];   // the columns inside the plane, per vector of the row
    for (int l = 0; l < W; ++l) {
      const int64_t y0 = lt.p0[l] - c.pad_h, x0 = lt.q0[l] - c.pad_w;
      for (int cb = 0; cb < NCB; ++cb) cols[cb][l] = LaneMask<T>(-(x0 + cb * W), c.W - (x0 + cb * W));
      for (int i = 0; i < A; ++i) {
        inside[i][l] = lt.n[l] >= 0 && y0 + i >= 0 && y0 + i < c.H;
        whole[i][l] = inside[i][l] && x0 >= 0 && x0 + CW <= c.W;
        row_ofs[i][l] = inside[i][l] ? ((lt.n[l] * c.G + g) * c.Cin + c0) * c.H * c.W + (y0 + i) * c.W + x0 : 0;
      }
    }
    int64_t v_ofs[A * A];
    for (int xi = 0; xi < A * A; ++xi) v_ofs[xi] = layout.at<T>(xi, 0, ch * W);
    for (int64_t ci = c0; ci < c1; ++ci) {
      Vec dv[A * A], tmp[A * A], v[A * A];
      const T* xc = x + (ci - c0) * c.H * c.W;
      for (int i = 0; i < A; ++i)
        for (int cb = 0; cb < NCB; ++cb) {
          Vec r[W];
#pragma GCC unroll 16
          for (int l = 0; l < W; ++l) {
            const T* src = xc + row_ofs[i][l] + cb * W;
            // the columns inside the plane, masked (element stores then a vector load stalled on
            // store forwarding: 16% of the transform)
            r[l] = whole[i][l] ? vload(src) : inside[i][l] ? vload_masked(src, cols[cb][l]) : Vec{};
          }
          vtranspose(r);
          for (int j = cb * W; j < A && j < cb * W + W; ++j) dv[i * A + j] = r[j - cb * W];
        }
      mul_left<false, A, T>(WinogradTile<M>::BT, dv, tmp);
      mul_right<true, A, T>(WinogradTile<M>::BT, tmp, v);
      for (int xi = 0; xi < A * A; ++xi) vstore(V + v_ofs[xi] + (ci - c0) * layout.row_stride, v[xi]);
    }
  }
}

// Y = A^T M A (+ bias) for the NB tiles from t0, output channels of group g. M holds the products
// MR x NR tiles as written by the micro-kernel: [xi][k / MR][t / NR][k % MR][t % NR], positions
// mb_stride apart, k blocks MR * mb_tiles apart (mb_tiles >= NB: M may hold more tiles than these).
template <typename T, int M>
void transform_output_block(const Conv& c, const Tiling<M>& tl, const T* Mb, int64_t mb_stride, int64_t mb_tiles,
                            const T* bias, int64_t g, int64_t t0, int64_t NB, T* y, const ConvEpilogue<T>& ep) {
  using Vec = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int A = WinogradTile<M>::alpha;
  // Lanes are tiles. A tile's output row (M columns) goes out as one partial vector store after a
  // register transpose of the row's M vectors, and its residual row comes in as one masked load; the
  // lanes' offsets and masks are worked out once per W tiles. Element by element (two scalar moves
  // per output through a staging buffer, offsets recomputed per lane and channel) this was ~15% of a
  // 64-channel layer's forward.
  for (int64_t ch = 0; ch < NB / W; ++ch) {
    const LaneTiles<M, W> lt(tl, t0 + ch * W);
    int64_t ofs[W];        // the tile's first output in channel 0 of group g
    int64_t rows[W];       // its rows inside the output (0: a lane past the last tile)
    bool full[W];          // all M columns inside
    LaneMask<T> cols[W];   // else the columns inside
    for (int l = 0; l < W; ++l) {
      rows[l] = lt.n[l] < 0 ? 0 : imin(M, c.P - lt.p0[l]);
      full[l] = lt.q0[l] + M <= c.Q;
      cols[l] = LaneMask<T>(0, imin(M, c.Q - lt.q0[l]));
      ofs[l] = lt.n[l] < 0 ? 0 : ((lt.n[l] * c.G + g) * c.Kout * c.P + lt.p0[l]) * c.Q + lt.q0[l];
    }
    // Each output row of a group of G = W/M lanes is one vinterleave_rows vector: written by one
    // store where the group is G tiles side by side with all columns inside (32- and 16-wide planes
    // with F(4x4), most of a 56-wide one), else by a masked store per run of tiles side by side.
    std::optional<OutputRuns<T, M, W>> runs;
    if constexpr (kInterleaveRows<T, M>) runs.emplace(lt, ofs, rows, c.Q);
    for (int64_t k = 0; k < c.Kout; ++k) {
      Vec mv[A * A], tmp[M * A], o[M * M];
      const int64_t t = ch * W, plane = k * c.P * c.Q;
      const T* mk = Mb + k / kMR<T> * kMR<T> * mb_tiles + t / kNR<T> * kMR<T> * kNR<T> + k % kMR<T> * kNR<T> + t % kNR<T>;
      for (int xi = 0; xi < A * A; ++xi) mv[xi] = vload(mk + xi * mb_stride);
      mul_left<false, A, T>(WinogradTile<M>::AT, mv, tmp);
      mul_right<true, M, T>(WinogradTile<M>::AT, tmp, o);
      const Vec bv = vbroadcast(bias ? bias[g * c.Kout + k] : T(0));
      if constexpr (kInterleaveRows<T, M>) {
        for (int i = 0; i < M; ++i) {
          Vec R[M];
          vinterleave_rows<M>(o + i * M, R);
          const OutputRuns<T, M, W>& ru = *runs;
          for (int q = 0; q < M; ++q) {
            Vec v = R[q] + bv;  // (the same operations per output as the transposed stores below)
            if (ru.whole[q]) {
              if (i >= ru.rows[q][0]) continue;
              const int64_t at = plane + ru.ofs[q][0] + i * c.Q;
              if (ep.residual) v += vload(ep.residual + at);
              vstore(y + at, activate_vec<T>(ep.act, v));
              continue;
            }
            if (ep.residual) {
              Vec rv{};
              for (int r = 0; r < ru.count[q]; ++r)
                if (i < ru.rows[q][r]) rv = vload_merge(rv, ep.residual + plane + ru.ofs[q][r] + i * c.Q, ru.mask[q][r]);
              v += rv;
            }
            v = activate_vec<T>(ep.act, v);
            for (int r = 0; r < ru.count[q]; ++r)
              if (i < ru.rows[q][r]) vstore_masked(y + plane + ru.ofs[q][r] + i * c.Q, v, ru.mask[q][r]);
          }
        }
        continue;
      }
      for (int i = 0; i < M; ++i) {
        Vec r[W];
        if (ep.residual) {  // row i of each tile's residual, transposed to the lanes
#pragma GCC unroll 16
          for (int l = 0; l < W; ++l)
            r[l] = i < rows[l] ? vload_masked(ep.residual + plane + ofs[l] + i * c.Q, cols[l]) : Vec{};
          vtranspose(r);
        }
        for (int j = 0; j < W; ++j) {
          if (j >= M) {
            r[j] = Vec{};
            continue;
          }
          Vec v = o[i * M + j] + bv;
          if (ep.residual) v += r[j];
          r[j] = activate_vec<T>(ep.act, v);
        }
        vtranspose(r);  // r[l]: tile l's row i in its first M lanes
#pragma GCC unroll 16
        for (int l = 0; l < W; ++l) {
          if (i >= rows[l]) continue;
          T* dst = y + plane + ofs[l] + i * c.Q;
          if (full[l])
            vstore_first<M, T>(dst, r[l]);
          else
            vstore_masked(dst, r[l], cols[l]);
        }
      }
    }
  }
}

// Tiles per block: a multiple of NR with the block's V and M (all positions) near a core's L2, and
// enough blocks for every thread.
template <typename T>
int64_t block_tiles(int64_t per_tile_elems, int64_t tiles, int64_t G, int nthr) {
  constexpr int64_t NR = kNR<T>;
  const int64_t budget = 512 * 1024;
  int64_t panels = imax(1, imin(8, budget / imax(1, per_tile_elems * NR * int64_t(sizeof(T)))));
  while (panels > 1 && G * ceil_div(tiles, panels * NR) < 4 * nthr) --panels;
  return panels * NR;
}

template <typename T, int M>
int64_t filters_numel(const Conv& c) {
  constexpr int A = WinogradTile<M>::alpha;
  return c.G * A * A * filter_position_stride<T>(c);
}

// Two schedules for the products. Tile blocks (conv_winograd): each thread transforms a block of NB
// tiles (V and M of every position sized for its L2) and multiplies it by every U panel, so all of U
// (alpha^2 x Kpad x Cin per group) is read once per block. Position by position (this function):
// the threads transform a span of tiles together (V and M of every position, up to kSpanBytes),
// then multiply position by position, each U panel read once per span against its position's V (in
// L2), then transform the outputs; V and M leave L2, so this pays only where U would come from
// memory for every block (above kStreamedFilterBytes: ResNet's 512-channel 7x7 layer at batch 8,
// F(2x2), U 16 MiB read by 8 blocks of 16 tiles: 9.0 -> 8.0 ms; VGG's 512-channel 28x28 layer,
// F(4x4), 38 MiB: 80 -> 58 ms; 256 channels at 28x28, F(4x4), 9.5 MiB, stays on blocks: 13.3 against
// 16.0) or where the blocks are too few to keep the threads busy (batch 1 at 7x7 is one block).
constexpr int64_t kStreamedFilterBytes = int64_t(12) << 20;
constexpr int64_t kSpanBytes = int64_t(8) << 20;

template <typename T, int M>
void conv_winograd_by_position(const Conv& c, const Tiling<M>& tl, const T* x, const T* U, int64_t us,
                               const T* bias, T* y, const ConvEpilogue<T>& ep) {
  constexpr int A = WinogradTile<M>::alpha;
  constexpr int64_t NR = kNR<T>, MR = kMR<T>, W = Simd<T>::W;
  const int64_t nkb = ceil_div(c.Kout, MR), Kpad = nkb * MR;
  const int64_t tile_bytes = A * A * (c.Cin + Kpad) * int64_t(sizeof(T));
  const int64_t span = imin(ceil_div(tl.tiles, NR), imax(1, kSpanBytes / (tile_bytes * NR))) * NR;
  const BlockLayout vl = BlockLayout::panels<T>(c.Cin, span);
  const int64_t ms = position_stride<T>(Kpad * span);
  Workspace ws(checked_bytes(A * A * (vl.xi_stride + ms), sizeof(T)));
  T* const V = ws.as<T>();
  T* const Mb = V + A * A * vl.xi_stride;
#pragma omp parallel num_threads(num_threads())
  for (int64_t g = 0; g < c.G; ++g) {
    const T* Ug = U + g * A * A * us;
    for (int64_t s0 = 0; s0 < tl.tiles; s0 += span) {
      // units of W tiles (batch 1 at 7x7 has 16 F(2x2) tiles: one panel, two units with AVX2's 8
      // lanes, one unit and a dead one with AVX-512's 16)
      const int64_t units = ceil_div(imin(span, tl.tiles - s0), W), panels = ceil_div(units * W, NR);
#pragma omp for schedule(static)
      for (int64_t u = 0; u < panels * NR / W; ++u) {
        const int64_t t = u * W;
        T* const Vu = V + t / NR * vl.panel_stride + t % NR;
        if (u < units) {
          transform_input_block<T, M>(c, tl, x, g, s0 + t, W, 0, c.Cin, vl, Vu);
        } else {  // the products read whole panels: no uninitialized columns (denormal garbage made
                  // a batch-1 layer's products 10x slower)
          for (int xi = 0; xi < A * A; ++xi)
            for (int64_t ci = 0; ci < c.Cin; ++ci) vstore(Vu + xi * vl.xi_stride + ci * vl.row_stride, vec_t<T>{});
        }
      }
#pragma omp for schedule(static)
      for (int64_t xk = 0; xk < A * A * nkb; ++xk) {
        const int64_t xi = xk / nkb, kb = xk % nkb;
        for (int64_t jp = 0; jp < panels; ++jp)
          gemm_micro_kernel<T>(c.Cin, Ug + xi * us + kb * c.Cin * MR, V + xi * vl.xi_stride + jp * vl.panel_stride,
                               Mb + xi * ms + kb * MR * span + jp * MR * NR);
      }
#pragma omp for schedule(static)
      for (int64_t u = 0; u < units; ++u) {
        const int64_t t = u * W;
        transform_output_block<T, M>(c, tl, Mb + t / NR * MR * NR + t % NR, ms, span, bias, g, s0 + t, W, y, ep);
      }
    }
  }
}

// prepared: the filters already transformed by transform_filters (inference), or null.
template <typename T, int M>
void conv_winograd(const Conv& c, const T* x, const T* w, const T* prepared, bool transposed_w, const T* bias,
                   T* y, const ConvEpilogue<T>& ep = {}) {
  constexpr int A = WinogradTile<M>::alpha;
  constexpr int64_t NR = kNR<T>;
  const Tiling<M> tl(c);
  if (tl.tiles == 0 || c.Kout == 0) return;
  const int64_t nkb = ceil_div(c.Kout, kMR<T>), Kpad = nkb * kMR<T>;
  Workspace uw(prepared ? 0 : checked_bytes(filters_numel<T, M>(c), sizeof(T)));
  const T* U = prepared;
  if (!U) {
    transform_filters<T, M>(c, w, transposed_w, uw.as<T>());
    U = uw.as<T>();
  }

  const int64_t us = filter_position_stride<T>(c);
  const int nthr = num_threads();
  const int64_t NB = block_tiles<T>(A * A * (c.Cin + Kpad), tl.tiles, c.G, nthr);
  const int64_t nblocks = ceil_div(tl.tiles, NB);
  if (A * A * us * int64_t(sizeof(T)) > kStreamedFilterBytes || c.G * nblocks <= 2 * nthr) {
    conv_winograd_by_position<T, M>(c, tl, x, U, us, bias, y, ep);
    return;
  }
  const BlockLayout vl = BlockLayout::panels<T>(c.Cin, NB);
  const int64_t ms = position_stride<T>(Kpad * NB);
  const int64_t per_thread = A * A * (vl.xi_stride + ms);
  Workspace ws(checked_bytes(nthr * per_thread, sizeof(T)));
#pragma omp parallel num_threads(nthr)
  {
    T* V = ws.as<T>() + omp_get_thread_num() * per_thread;
    T* Mb = V + A * A * vl.xi_stride;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < c.G * nblocks; ++task) {
      const int64_t g = task / nblocks, t0 = task % nblocks * NB;
      transform_input_block<T, M>(c, tl, x, g, t0, NB, 0, c.Cin, vl, V);
      const T* Ug = U + g * A * A * us;
      // U panel outer: it stays in L1 while the block's V panels (sized for L2) stream past; a
      // position's U (Kout x Cin) can be far larger than L2.
      for (int xi = 0; xi < A * A; ++xi)
        for (int64_t kb = 0; kb < nkb; ++kb)
          for (int64_t jp = 0; jp < NB / NR; ++jp)
            gemm_micro_kernel<T>(c.Cin, Ug + xi * us + kb * c.Cin * kMR<T>, V + xi * vl.xi_stride + jp * NR * c.Cin,
                                 Mb + xi * ms + kb * kMR<T> * NB + jp * kMR<T> * NR);
      transform_output_block<T, M>(c, tl, Mb, ms, NB, bias, g, t0, NB, y, ep);
    }
  }
}

Conv forward_conv(const ConvShape& s) {
  return Conv{s.N, s.G, s.Cg(), s.Kg(), s.H, s.W, s.P, s.Q, s.pad_h, s.pad_w};
}

// grad-input as a forward convolution of gy: Kg -> Cg channels, P x Q -> H x W, padding 2 - pad.
Conv backward_input_conv(const ConvShape& s) {
  return Conv{s.N, s.G, s.Kg(), s.Cg(), s.P, s.Q, s.H, s.W, 2 - s.pad_h, 2 - s.pad_w};
}

// Z[xi][k - k0][NB] = A dY A^T for the NB output tiles from t0 (zero outside P x Q and past the last
// tile), channels [k0, k1) of group g, positions xi_stride apart; rows k >= Kout are zero.
template <typename T, int M>
void transform_grad_output_block(const Conv& c, const Tiling<M>& tl, const T* gy, int64_t g, int64_t t0,
                                 int64_t NB, int64_t k0, int64_t k1, int64_t xi_stride, T* Z) {
  using Vec = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int A = WinogradTile<M>::alpha;
  for (int64_t ch = 0; ch < NB / W; ++ch) {
    const LaneTiles<M, W> lt(tl, t0 + ch * W);
    LaneMask<T> cols[W];  // a tile's columns inside the output
    int64_t origin[W];    // a tile's first element in channel k0's plane of gy
    int64_t rows[W];      // and its rows inside the output (0: a lane past the last tile)
    for (int l = 0; l < W; ++l) {
      cols[l] = LaneMask<T>(0, imin(M, c.Q - lt.q0[l]));
      rows[l] = lt.n[l] < 0 ? 0 : imin(M, c.P - lt.p0[l]);
      origin[l] = lt.n[l] < 0 ? 0 : (((lt.n[l] * c.G + g) * c.Kout + k0) * c.P + lt.p0[l]) * c.Q + lt.q0[l];
    }
    // As the output transform: a group's row of gy is one masked load per run of tiles side by
    // side (columns past the output's edge and other runs' lanes read 0), and vdeinterleave_rows
    // gives one vector per column.
    constexpr bool grouped = kInterleaveRows<T, M>;
    std::optional<OutputRuns<T, M, W>> runs;
    if constexpr (grouped) runs.emplace(lt, origin, rows, c.Q);
    for (int64_t k = k0; k < k1; ++k) {
      Vec z[A * A];
      T* zk = Z + (k - k0) * NB + ch * W;
      if (k >= c.Kout) {
        for (int xi = 0; xi < A * A; ++xi) vstore(zk + xi * xi_stride, Vec{});
        continue;
      }
      Vec dv[M * M], tmp[A * M];
      for (int i = 0; i < M; ++i) {
        if constexpr (grouped) {
          const OutputRuns<T, M, W>& ru = *runs;
          Vec R[M];
          for (int q = 0; q < M; ++q) {
            R[q] = Vec{};
            for (int r = 0; r < ru.count[q]; ++r)
              if (i < ru.rows[q][r])
                R[q] = vload_merge(R[q], gy + ru.ofs[q][r] + (k - k0) * c.P * c.Q + i * c.Q, ru.mask[q][r]);
          }
          vdeinterleave_rows<M>(R, dv + i * M);
          continue;
        }
        // each tile's row as one masked load (M columns, fewer at the right edge), W tiles'
        // rows transposed in registers (an element-by-element gather was ~20% of grad-weight)
        Vec r[W];
        for (int l = 0; l < W; ++l)
          r[l] = i < rows[l] ? vload_masked(gy + origin[l] + (k - k0) * c.P * c.Q + i * c.Q, cols[l]) : Vec{};
        vtranspose(r);
        for (int j = 0; j < M; ++j) dv[i * M + j] = r[j];
      }
      mul_left<true, M, T>(WinogradTile<M>::AT, dv, tmp);
      mul_right<false, A, T>(WinogradTile<M>::AT, tmp, z);
      for (int xi = 0; xi < A * A; ++xi) vstore(zk + xi * xi_stride, z[xi]);
    }
  }
}

// One block of P rows, src[xi][P][NB] (positions position_stride(P * NB) apart) ->
// dst[xi * dst_xi_stride + t * P + i]: tiles become the
// reduction dimension of a packed panel. W rows x W tiles at a time through a register transpose
// (element by element, this pack took about as long as grad-weight's products); NB is a multiple of W.
template <typename T, int P, int R0 = 0>
PYCONV_INLINE void pack_tile_major_rows(const T* s, int64_t NB, T* d) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W, ROWS = P - R0 < W ? P - R0 : W;
  for (int64_t t = 0; t < NB; t += W) {
    V r[W];
    for (int l = 0; l < W; ++l) r[l] = l < ROWS ? vload(s + (R0 + l) * NB + t) : V{};
    vtranspose(r);
    for (int m = 0; m < W; ++m) vstore_first<ROWS, T>(d + (t + m) * P + R0, r[m]);
  }
  if constexpr (R0 + W < P) pack_tile_major_rows<T, P, R0 + W>(s, NB, d);
}

template <typename T, int P>
void pack_tile_major(const T* src, int64_t positions, int64_t NB, int64_t dst_xi_stride, T* dst) {
  const int64_t src_xi_stride = position_stride<T>(P * NB);
  for (int64_t xi = 0; xi < positions; ++xi)
    pack_tile_major_rows<T, P>(src + xi * src_xi_stride, NB, dst + xi * dst_xi_stride);
}

// tile[W][W] = a[W rows of kc, row stride lda] . b[kc][W]: grad-weight's products for input groups of
// at most W channels (Narrow plans), whose B panels would be half zeros at the GEMM kernel's 2W
// columns. One step: a B vector, W broadcasts (one element of each of A's rows, as the grad-output
// transform wrote them: packing Z tile-major first was ~6% of a 16-channel layer's grad-weight), W
// FMAs into W accumulators (16 of the 32 zmm registers on AVX-512).
template <typename T>
PYCONV_INLINE void narrow_micro_kernel(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b,
                                       T* __restrict tile) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V c[W];
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i) c[i] = V{};
  for (int64_t k = 0; k < kc; ++k, b += W) {
    const V bv = vload(b);
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) c[i] += gemm_splat(a[i * lda + k]) * bv;
  }
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i) vstore(tile + i * W, c[i]);
}

// The pieces of grad-weight, shared by its two schedules. A block of NB tiles of group g is
// transformed row block by row block (NR input channels of V, MR grad-output channels of Z) into a
// small scratch and packed tile-major into Vt[xi][Cpad][NB] and Zt[xi][Kpad][NB], the micro-kernel's
// B and A panels; the products add Zt . Vt into dU[g][xi][Kpad][Cpad]; the end transforms dU back.
// Narrow (at most W input channels a group: CIFAR ResNets' 16-channel layers on AVX-512): W-wide V
// panels and Z left in rows, on narrow_micro_kernel. The GEMM kernel's 2W-column panels were half
// zeros there, and its 6-row Z panels took three sparse 16 x 16 transposes each per 16 channels.
template <typename T, int M, bool Narrow = false>
struct WeightGradPlan {
  static constexpr int A = WinogradTile<M>::alpha;
  static constexpr int64_t NR = Narrow ? Simd<T>::W : kNR<T>, MR = Narrow ? Simd<T>::W : kMR<T>;
  static constexpr int64_t P = NR > MR ? NR : MR;
  using value_type = T;
  const Conv& c;
  const Tiling<M> tl;
  const int64_t NB, nblocks, nkb, ncb, Kpad, Cpad;
  const int64_t du_stride, du_elems;  // dU: positions du_stride apart, all groups
  const int64_t vt_stride, zt_stride, vt_elems, zt_elems, scratch_elems;
  const BlockLayout rows_layout;

  WeightGradPlan(const Conv& conv, int64_t nb)
      : c(conv), tl(conv), NB(nb), nblocks(ceil_div(tl.tiles, nb)), nkb(ceil_div(conv.Kout, MR)),
        ncb(ceil_div(conv.Cin, NR)), Kpad(nkb * MR), Cpad(ncb * NR), du_stride(position_stride<T>(Kpad * Cpad)),
        du_elems(conv.G * A * A * du_stride), vt_stride(position_stride<T>(Cpad * nb)),
        zt_stride(position_stride<T>(Kpad * nb)), vt_elems(A * A * vt_stride), zt_elems(A * A * zt_stride),
        scratch_elems(A * A * position_stride<T>(P * nb)), rows_layout(BlockLayout::rows<T>(NR, nb)) {}

  // Row block rb (< ncb: V's NR channels from rb * NR, else Z's MR channels) of block (g, t0).
  void transform_rows(const T* x, const T* gy, int64_t g, int64_t t0, int64_t rb, T* rows, T* Vt, T* Zt) const {
    if (rb < ncb) {
      const int64_t c0 = rb * NR, c1 = imin(c0 + NR, c.Cin);
      if (c1 - c0 < NR)  // channels past Cin read 0
        for (int xi = 0; xi < A * A; ++xi)
          for (int64_t e = (c1 - c0) * NB; e < NR * NB; ++e) rows[xi * rows_layout.xi_stride + e] = T(0);
      transform_input_block<T, M>(c, tl, x, g, t0, NB, c0, c1, rows_layout, rows);
      pack_tile_major<T, NR>(rows, A * A, NB, vt_stride, Vt + c0 * NB);
    } else {
      const int64_t k0 = (rb - ncb) * MR;
      if constexpr (Narrow) {  // Z stays in rows: narrow_micro_kernel broadcasts from them
        transform_grad_output_block<T, M>(c, tl, gy, g, t0, NB, k0, k0 + MR, zt_stride, Zt + k0 * NB);
      } else {
        transform_grad_output_block<T, M>(c, tl, gy, g, t0, NB, k0, k0 + MR, position_stride<T>(MR * NB), rows);
        pack_tile_major<T, MR>(rows, A * A, NB, zt_stride, Zt + k0 * NB);
      }
    }
  }

  // dUg[xi][:, cb * NR + [0, NR)] (+)= Zt[xi] . Vt[xi] (one block's tiles); `init` stores instead.
  void multiply(int64_t xi, int64_t cb, bool init, const T* Vt, const T* Zt, T* dUg) const {
    constexpr int W = Simd<T>::W;
    alignas(64) T tile[MR * NR];
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const T* a = Zt + xi * zt_stride + kb * MR * NB;
      const T* b = Vt + xi * vt_stride + cb * NR * NB;
      if constexpr (Narrow)
        narrow_micro_kernel<T>(NB, a, NB, b, tile);
      else
        gemm_micro_kernel<T>(NB, a, b, tile);
      T* d = dUg + xi * du_stride + kb * MR * Cpad + cb * NR;
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; j += W)
          vstore(d + i * Cpad + j, init ? vload(tile + i * NR + j) : vload(d + i * Cpad + j) + vload(tile + i * NR + j));
    }
  }

  // gw = G^T (dU_0 + ... + dU_{slots-1}) G, the slots summed in order, vectorized across W input
  // channels (dU rows are channel-contiguous, Cpad a multiple of W).
  void finish(const T* dU, int64_t slots, int nthr, T* gw) const {
    using Vec = vec_t<T>;
    constexpr int W = Simd<T>::W;
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t gk = 0; gk < c.G * c.Kout; ++gk) {
      const int64_t g = gk / c.Kout, k = gk % c.Kout;
      for (int64_t c0 = 0; c0 < c.Cin; c0 += W) {
        Vec du[A * A], tmp[3 * A], f[9];
        const T* src = dU + g * A * A * du_stride + k * Cpad + c0;
        for (int xi = 0; xi < A * A; ++xi) du[xi] = vload(src + xi * du_stride);
        for (int64_t s = 1; s < slots; ++s)
          for (int xi = 0; xi < A * A; ++xi) du[xi] += vload(src + s * du_elems + xi * du_stride);
        mul_left<true, A, T>(WinogradTile<M>::G, du, tmp);
        mul_right<false, 3, T>(WinogradTile<M>::G, tmp, f);
        alignas(32) T fb[9 * W];
        for (int rs = 0; rs < 9; ++rs) vstore(fb + rs * W, f[rs]);
        T* gwk = gw + ((g * c.Kout + k) * c.Cin + c0) * 9;
        for (int64_t l = 0; l < imin(W, c.Cin - c0); ++l)
          for (int rs = 0; rs < 9; ++rs) gwk[l * 9 + rs] = fb[rs * W + l];
      }
    }
  }
};

// Two schedules for the sum over tiles; both give the same bits whatever the thread count.
// Slots (small filter gradients: CIFAR's 16-64 channel layers): the blocks are cut into a fixed
// number of consecutive runs, each summed into its own copy of dU by one thread from transform to
// products, in that thread's cache; `finish` adds the copies in order. The shared schedule
// synchronized twice per block and handed every transformed block to the other cores: 8x16x32x32
// spent half its time packing into lines the other core had just read.
// Shared (larger gradients, where copies of dU would cost more than they save): the threads work
// on one block at a time in two phases. Transform: each takes row blocks into the shared Vt, Zt.
// Multiply: each takes (position, NR channels) pairs and accumulates their tiles into the one dU, so
// every element sums the blocks in order.
constexpr int64_t kMaxWeightGradSlots = 8;
constexpr int64_t kWeightGradSlotBytes = int64_t(6) << 20;  // all slots' dU together

// Tiles per block of the slot schedule: 2 * NR, halved (down to 64 bytes of tiles: 16 floats, 8
// doubles) while that leaves fewer than 4 blocks to share out (64 channels at 8x8, batch 8, F(4x4):
// 32 tiles in 2 slots instead of 1, 0.29 -> 0.18 ms; with AVX-512's 32-float panels one block held
// all 32 tiles and the layer fell to the shared schedule, 2.4x slower).
template <typename T, int M>
int64_t weight_grad_slot_tiles(const Conv& c) {
  const int64_t tiles = Tiling<M>(c).tiles, least = 64 / int64_t(sizeof(T));
  int64_t nb = 2 * kNR<T>;
  while (nb > least && c.G * ceil_div(tiles, nb) < 4) nb /= 2;
  return imax(nb, least);
}

// The slot count for a plan with weight_grad_slot_tiles' blocks; 0: the shared schedule.
template <class Plan>
int64_t weight_grad_slots(const Plan& pl) {
  const int64_t slots = imin(kMaxWeightGradSlots, pl.c.G * pl.nblocks);
  return slots >= 2 && slots * pl.du_elems * int64_t(sizeof(typename Plan::value_type)) <= kWeightGradSlotBytes ? slots : 0;
}

template <typename T, class Plan>
void weight_grad_by_slots(const Plan& pl, int64_t slots, const T* x, const T* gy, T* gw) {
  const Conv& c = pl.c;
  const int nthr = num_threads();
  const int64_t tasks = c.G * pl.nblocks, private_elems = pl.vt_elems + pl.zt_elems + pl.scratch_elems;
  Workspace ws(checked_bytes(slots * pl.du_elems + nthr * private_elems, sizeof(T)));
  T* const dU = ws.as<T>();
#pragma omp parallel num_threads(nthr)
  {
    T* const Vt = dU + slots * pl.du_elems + omp_get_thread_num() * private_elems;
    T* const Zt = Vt + pl.vt_elems;
    T* const rows = Zt + pl.zt_elems;
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < slots; ++s) {
      T* const dUs = dU + s * pl.du_elems;
      const int64_t first = s * tasks / slots, last = (s + 1) * tasks / slots;
      for (int64_t task = first; task < last; ++task) {
        const int64_t g = task / pl.nblocks, t0 = task % pl.nblocks * pl.NB;
        const bool init = task == first || t0 == 0;  // this slot's first block of group g
        if (task == first && g > 0)  // groups before g get nothing from this slot
          std::fill(dUs, dUs + g * pl.A * pl.A * pl.du_stride, T(0));
        for (int64_t rb = 0; rb < pl.ncb + pl.nkb; ++rb) pl.transform_rows(x, gy, g, t0, rb, rows, Vt, Zt);
        T* dUg = dUs + g * pl.A * pl.A * pl.du_stride;
        for (int64_t xi = 0; xi < pl.A * pl.A; ++xi)
          for (int64_t cb = 0; cb < pl.ncb; ++cb) pl.multiply(xi, cb, init, Vt, Zt, dUg);
        if (task + 1 == last && g + 1 < c.G)  // nor groups after its last
          std::fill(dUs + (g + 1) * pl.A * pl.A * pl.du_stride, dUs + pl.du_elems, T(0));
      }
    }
  }
  pl.finish(dU, slots, nthr, gw);
}

template <typename T, int M, bool Narrow>
void weight_grad_shared(const Conv& c, const T* x, const T* gy, T* gw) {
  // A longer reduction per micro-kernel call amortizes its loads of dU (8 * NR: slower).
  const WeightGradPlan<T, M, Narrow> pl(c, 4 * kNR<T>);
  const int nthr = num_threads();
  Workspace ws(checked_bytes(pl.du_elems + pl.vt_elems + pl.zt_elems + nthr * pl.scratch_elems, sizeof(T)));
  T* const dU = ws.as<T>();
  T* const Vt = dU + pl.du_elems;
  T* const Zt = Vt + pl.vt_elems;
#pragma omp parallel num_threads(nthr)
  {
    T* rows = Zt + pl.zt_elems + omp_get_thread_num() * pl.scratch_elems;
    for (int64_t task = 0; task < c.G * pl.nblocks; ++task) {
      const int64_t g = task / pl.nblocks, t0 = task % pl.nblocks * pl.NB;
#pragma omp for schedule(dynamic)  // V and Z row blocks differ in cost
      for (int64_t rb = 0; rb < pl.ncb + pl.nkb; ++rb) pl.transform_rows(x, gy, g, t0, rb, rows, Vt, Zt);
      T* dUg = dU + g * pl.A * pl.A * pl.du_stride;
#pragma omp for schedule(static)
      for (int64_t xc = 0; xc < pl.A * pl.A * pl.ncb; ++xc)  // a group's first block initializes its dU
        pl.multiply(xc / pl.ncb, xc % pl.ncb, t0 == 0, Vt, Zt, dUg);
    }
  }
  pl.finish(dU, 1, nthr, gw);
}

template <typename T, int M, bool Narrow>
void weight_grad_planned(const Conv& c, const T* x, const T* gy, T* gw) {
  const WeightGradPlan<T, M, Narrow> slot_plan(c, weight_grad_slot_tiles<T, M>(c));
  if (const int64_t slots = weight_grad_slots(slot_plan))
    weight_grad_by_slots(slot_plan, slots, x, gy, gw);
  else
    weight_grad_shared<T, M, Narrow>(c, x, gy, gw);
}

template <typename T, int M>
void weight_grad_winograd(const Conv& c, const T* x, const T* gy, T* gw) {
  if (Tiling<M>(c).tiles == 0) {  // no tiles: dU would be unset
    for (int64_t e = 0; e < c.G * c.Kout * c.Cin * 9; ++e) gw[e] = T(0);
    return;
  }
  if (c.Cin <= Simd<T>::W)
    weight_grad_planned<T, M, true>(c, x, gy, gw);
  else
    weight_grad_planned<T, M, false>(c, x, gy, gw);
}

}  // namespace

template <typename T>
int64_t winograd_filters_numel(const ConvShape& s, int m) {
  return m == 2 ? filters_numel<T, 2>(forward_conv(s)) : filters_numel<T, 4>(forward_conv(s));
}

template <typename T>
void winograd_prepare_filters(const ConvShape& s, int m, const T* w, T* U) {
  if (m == 2)
    transform_filters<T, 2>(forward_conv(s), w, false, U);
  else
    transform_filters<T, 4>(forward_conv(s), w, false, U);
}

template <typename T>
void winograd_forward(const ConvShape& s, int m, const T* x, const T* w, const T* prepared, const T* b, T* y,
                      const ConvEpilogue<T>& ep) {
  if (m == 2)
    conv_winograd<T, 2>(forward_conv(s), x, w, prepared, false, b, y, ep);
  else
    conv_winograd<T, 4>(forward_conv(s), x, w, prepared, false, b, y, ep);
}

template <typename T>
void winograd_backward_input(const ConvShape& s, int m, const T* gy, const T* w, T* gx) {
  if (m == 2)
    conv_winograd<T, 2>(backward_input_conv(s), gy, w, nullptr, true, nullptr, gx);
  else
    conv_winograd<T, 4>(backward_input_conv(s), gy, w, nullptr, true, nullptr, gx);
}

template <typename T>
void winograd_backward_weight(const ConvShape& s, int m, const T* x, const T* gy, T* gw, T* gb) {
  if (gw) {
    if (m == 2)
      weight_grad_winograd<T, 2>(forward_conv(s), x, gy, gw);
    else
      weight_grad_winograd<T, 4>(forward_conv(s), x, gy, gw);
  }
  if (gb) channel_sums(gy, s.N, s.K, s.P * s.Q, gb);
}

template int64_t winograd_filters_numel<float>(const ConvShape&, int);
template int64_t winograd_filters_numel<double>(const ConvShape&, int);
template void winograd_prepare_filters<float>(const ConvShape&, int, const float*, float*);
template void winograd_prepare_filters<double>(const ConvShape&, int, const double*, double*);
template void winograd_forward<float>(const ConvShape&, int, const float*, const float*, const float*, const float*,
                                      float*, const ConvEpilogue<float>&);
template void winograd_forward<double>(const ConvShape&, int, const double*, const double*, const double*,
                                       const double*, double*, const ConvEpilogue<double>&);
template void winograd_backward_input<float>(const ConvShape&, int, const float*, const float*, float*);
template void winograd_backward_input<double>(const ConvShape&, int, const double*, const double*, double*);
template void winograd_backward_weight<float>(const ConvShape&, int, const float*, const float*, float*, float*);
template void winograd_backward_weight<double>(const ConvShape&, int, const double*, const double*, double*,
                                               double*);

}  // namespace PYCONV_ISA
}  // namespace pyconv
