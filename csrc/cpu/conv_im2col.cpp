// Convolution as matrix multiplication (im2col + GEMM), NCHW, per group g (Cg = C/G, Kg = K/G):
//
//   col[(c,r,s), (n,p,q)] = x[n, gCg+c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)
//   forward      Y_g[Kg, N*P*Q]   = W_g[Kg, Cg*R*S] . col[Cg*R*S, N*P*Q] + b        (then Y is NKPQ)
//   grad-input   per phase (h mod sh, w mod sw) of gx, a stride-1 convolution of dY with the taps that
//                reach that phase: gx_phase[Cg, N*U*V] = W'_g[Cg, Kg*taps] . col(dY)[Kg*taps, N*U*V]
//                (stride 1: one phase); strided or narrow layers: dcol = W_g^T . dY_g, gx = col2im(dcol)
//   grad-weight  dW_g[Kg, Cg*R*S]  = dY_g[Kg, NPQ] . col^T[NPQ, Cg*R*S]
//   grad-bias    db[k] = sum_{n,p,q} dY[n,k,p,q]
//   statistics   (training BN) sum_{n,p,q} Y[n,k,p,q] and of Y^2, per finished GEMM tile in its epilogue
//
// The column matrix is never built: the GEMM's B packer (cpu/gemm_driver.h) gathers each KC x NR
// panel of col (forward) or col^T (grad-weight) straight from x, so the only scratch is the GEMM's
// panels; a stride-1 grad-input runs the same packer over gy (no dcol, no col2im); strided layers
// and layers with few input channels buffer dcol = W^T dY a few images at a time. A 1x1,
// stride-1, unpadded convolution needs no im2col at all: col is x itself (and W^T . dY is gx).
//
// Inference on few output pixels (batch 1, 7x7 planes) runs the forward transposed, pixels as the
// GEMM's rows: Y_g^T[N*P*Q, Kg] = col^T . W_g^T. The micro-tile is MR = 6 rows by NR = 16 columns, so
// 49 pixels fill 54 rows (91% useful) where as columns they filled 64 (77%); the prepared weights
// are then W_g^T's B panels, and each finished tile is stored transposed into NCHW.
#include "cpu/conv_im2col.h"

#include "cpu/gemm_driver.h"
#include "cpu/sums.h"

namespace pyconv {
namespace PYCONV_ISA {
namespace {

bool is_pointwise(const ConvShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 &&
         s.P == s.H && s.Q == s.W;
}

// Valid range [lo, hi) of t in [0, len) with 0 <= i0 + t*st < extent.
PYCONV_INLINE void valid_range(int64_t i0, int64_t st, int64_t extent, int64_t len, int64_t& lo, int64_t& hi) {
  if (st == 1) {  // the packers call this per panel row: no integer division on the common path
    lo = imin(len, imax(0, -i0));
    hi = imax(lo, imin(len, extent - i0));
    return;
  }
  if (st == 2) {  // shifts for the common stride (two divisions per column and row were most of
                  // grad-weight's pack on small strided layers)
    lo = i0 >= 0 ? 0 : imin(len, (1 - i0) >> 1);
    hi = i0 < extent ? imin(len, ((extent - 1 - i0) >> 1) + 1) : 0;
  } else {
    lo = i0 >= 0 ? 0 : imin(len, ceil_div(-i0, st));
    hi = i0 < extent ? imin(len, (extent - 1 - i0) / st + 1) : 0;
  }
  if (hi < lo) hi = lo;
}

// dst[t*ds] = row[iw + t*sw] for t in [0, len), 0 where the column falls in the padding.
template <typename T>
PYCONV_INLINE void gather_row(const T* row, int64_t iw, int64_t sw, int64_t W, int64_t len, T* dst, int64_t ds) {
  int64_t lo, hi;
  valid_range(iw, sw, W, len, lo, hi);
  for (int64_t t = 0; t < lo; ++t) dst[t * ds] = T(0);
  const T* src = row + iw;
  if (sw == 1)
    for (int64_t t = lo; t < hi; ++t) dst[t * ds] = src[t];
  else
    for (int64_t t = lo; t < hi; ++t) dst[t * ds] = src[t * sw];
  for (int64_t t = hi; t < len; ++t) dst[t * ds] = T(0);
}

// Where the taps of a convolution read, as seen by a GEMM over its output pixels: output pixel
// (p, q) reads input row p*sh + row_off[r] and column q*sw + col_off[s] for tap (r, s). Forward:
// row_off[r] = r*dil - pad. A grad-input phase (below) has its own taps and offsets.
struct TapGrid {
  int64_t C, H, W;             // channels per image (image stride C*H*W), input plane
  int64_t P, Q, sh, sw;        // output plane and strides
  int64_t R, S;                // taps per column / row
  const int64_t* row_off;      // [R]
  const int64_t* col_off;      // [S]
};

// B = col[C'*R*S, N*P*Q]: element ((c, r, s), (n, p, q)) = x[n, c, p*sh + row_off[r], q*sw + col_off[s]]
// (0 outside the plane); x points at the first channel of the group, C' channels per group.
template <typename T>
struct Im2colPackB {
  TapGrid t;
  const T* x;
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    if (kc == 0) return;  // a grad-input phase no tap reaches
    const int64_t PQ = t.P * t.Q, HW = t.H * t.W, img = t.C * HW;
    // The panel's pixels as runs along one output row.
    struct Run {
      int64_t jj, len, ih0, iw0;
      const T* img;
    } runs[NR];
    int nruns = 0;
    for (int64_t j = j0; j < j0 + nr;) {
      const int64_t n = j / PQ, pq = j % PQ, p = pq / t.Q, q = pq % t.Q;
      const int64_t len = imin(t.Q - q, j0 + nr - j);
      runs[nruns++] = {j - j0, len, p * t.sh, q * t.sw, x + n * img};
      j += len;
    }
    int64_t c = k0 / (t.R * t.S), r = (k0 / t.S) % t.R, sc = k0 % t.S;
    if (nr == NR && nruns * t.S <= kMaskedRuns && (t.sw == 1 || t.sw == 2)) {
      if (t.sw == 1)
        pack_rows<1>(runs, nruns, c, r, sc, kc, dst);
      else
        pack_rows<2>(runs, nruns, c, r, sc, kc, dst);
      return;
    }
    for (int64_t k = 0; k < kc; ++k) {
      T* d = dst + k * NR;
      for (int i = 0; i < nruns; ++i) {
        const Run& u = runs[i];
        const int64_t ih = u.ih0 + t.row_off[r];
        if (ih < 0 || ih >= t.H) {
          for (int64_t e = 0; e < u.len; ++e) d[u.jj + e] = T(0);
          continue;
        }
        gather_row(u.img + c * HW + ih * t.W, u.iw0 + t.col_off[sc], t.sw, t.W, u.len, d + u.jj, 1);
      }
      for (int64_t jj = nr; jj < NR; ++jj) d[jj] = T(0);
      if (++sc == t.S) {
        sc = 0;
        if (++r == t.R) r = 0, ++c;
      }
    }
  }

  // Stride 1 or 2: a run's panel row for tap (c, r, s) is len elements of one input row, ST apart,
  // less the columns in the padding. Per (run, s) the lanes it fills are fixed, so a few masked
  // vector loads build a panel row (the scalar gather costs about 3x as much, and packing was ~30% of
  // a 64-channel layer); stride 2 loads 2*NR contiguous elements and keeps the even ones. Rows are
  // looked up once per (c, r).
  static constexpr int kMaskedRuns = 64;
  template <int ST, class Run>
  PYCONV_INLINE void pack_rows(const Run* runs, int nruns, int64_t c, int64_t r, int64_t sc, int64_t kc,
                               T* d) const {
    constexpr int NR = GemmBlocking<T>::NR, W = Simd<T>::W, NL = ST * NR / W;  // source vectors per row
    const int64_t HW = t.H * t.W;
    LaneMask<T> lanes[kMaskedRuns][NL];
    int64_t shift[kMaskedRuns];  // panel lane l reads row[ST*l + shift]
    for (int i = 0; i < nruns; ++i)
      for (int64_t s = 0; s < t.S; ++s) {
        const Run& u = runs[i];
        const int64_t iw = u.iw0 + t.col_off[s], m = i * t.S + s;
        int64_t lo, hi;  // the run's columns inside the row
        valid_range(iw, ST, t.W, u.len, lo, hi);
        // source elements ST*(jj+lo) .. ST*(jj+hi-1), none past the last valid one
        const int64_t first = ST * (u.jj + lo), end = hi > lo ? ST * (u.jj + hi - 1) + 1 : first;
        for (int v = 0; v < NL; ++v) lanes[m][v] = LaneMask<T>(first - v * W, end - v * W);
        shift[m] = iw - ST * u.jj;
      }
    const auto load = [&](const T* src, const LaneMask<T>* lm, int v) {
      if (ST == 1) return vload_masked(src + v * W, lm[v]);
      return vevens(vload_masked(src + 2 * v * W, lm[2 * v]), vload_masked(src + (2 * v + 1) * W, lm[2 * v + 1]));
    };
    for (int64_t k = 0; k < kc;) {
      const T* rows[NR];
      int which[NR], nv = 0;
      for (int i = 0; i < nruns; ++i) {
        const int64_t ih = runs[i].ih0 + t.row_off[r];
        if (ih >= 0 && ih < t.H) rows[nv] = runs[i].img + c * HW + ih * t.W, which[nv++] = i * int(t.S);
      }
      // the next panel along the row reads the next ST*NR elements: ask for them now (+14% on
      // 56x56x64), into L1 (into L2 only, the stride-2 packs still waited on them: 8x128x56x56
      // stride 2 was 15-20% slower)
      for (int v = 0; v < nv; ++v) {
        const T* next = rows[v] + shift[which[v]] + ST * NR;
        for (int l = 0; l <= ST; ++l) __builtin_prefetch(next + l * NR, 0, 3);
      }
      const int64_t s_end = imin(t.S, sc + (kc - k));
      if (nv == 1) {  // the common case: one run, nothing to merge
        for (int64_t s = sc; s < s_end; ++s, d += NR) {
          const int64_t m = which[0] + s;
          const T* src = rows[0] + shift[m];
          vstore(d, load(src, lanes[m], 0)), vstore(d + W, load(src, lanes[m], 1));
        }
      } else {
        for (int64_t s = sc; s < s_end; ++s, d += NR) {
          vec_t<T> v0{}, v1{};
          for (int v = 0; v < nv; ++v) {
            const int64_t m = which[v] + s;
            const T* src = rows[v] + shift[m];
            v0 = vor<T>(v0, load(src, lanes[m], 0));
            v1 = vor<T>(v1, load(src, lanes[m], 1));
          }
          vstore(d, v0), vstore(d + W, v1);
        }
      }
      k += s_end - sc;
      sc = 0;
      if (++r == t.R) r = 0, ++c;
    }
  }
};

// B = col^T[N*P*Q, Cg*R*S] of one group: rows are pixels, columns filter taps. Each column of a
// panel reads a stretch of one input row (every second element at stride 2, deinterleaved from two
// vector loads); where all NR columns are inside their rows the stretches of W columns are
// transposed W pixels at a time in registers (element by element, this pack took as long as the
// products of ResNet-50's 1x1 grad-weight), the edges with masked loads, strides past 2 element by
// element. A pointwise layer's plane is one row.
template <typename T>
struct Im2colTransposedPackB {
  const ConvShape& s;
  const T* x;
  // Up to this many filter columns (S), a chunk's edge masks are built once per column offset and
  // shared by the panel's columns with that offset (built per column, with the (n, p, q) of each run
  // found by division, they were two thirds of a stride-2 16 -> 32 grad-weight's pack).
  static constexpr int64_t kTabledOffsets = 16;
  // Pointwise layers: column j is channel j's plane, read over the block's pixels (the other
  // layers read each input row for several taps; the hardware's streams do there).
  void source_prefetch(int64_t j0, int64_t nr, int64_t k0, int64_t kc) const {
    if (!is_pointwise(s)) return;
    const int64_t HW = s.H * s.W;
    const BatchedColumns<T> planes{x, s.C * HW, HW, HW};  // x as [channels, N*H*W]
    planes.for_each_run(k0, kc, [&](int64_t, const T* col, int64_t len) {
      for (int64_t jj = 0; jj < nr; ++jj) prefetch_run<2>(col + (j0 + jj) * HW, len);
    });
  }
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR, W = Simd<T>::W;
    const int64_t PQ = s.P * s.Q, HW = s.H * s.W, img = s.C * HW;
    int64_t coff[NR], roff[NR], soff[NR], col_of[NR];
    for (int64_t jj = 0; jj < nr; ++jj) {
      const int64_t crs = j0 + jj;
      coff[jj] = (crs / (s.R * s.S)) * HW;
      roff[jj] = ((crs / s.S) % s.R) * s.dil_h;
      col_of[jj] = crs % s.S;
      soff[jj] = col_of[jj] * s.dil_w;
    }
    if (nr < NR)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t jj = nr; jj < NR; ++jj) dst[k * NR + jj] = T(0);
    const bool flat = is_pointwise(s);
    const int64_t Q = flat ? PQ : s.Q, rows = flat ? 1 : s.P, rowlen = flat ? HW : s.W;  // output, input rows
    const bool tabled = s.S <= kTabledOffsets;
    // the first pixel's (n, p, q); each run advances them (no divisions per run)
    int64_t n = k0 / PQ, p = (k0 % PQ) / Q, q = (k0 % PQ) % Q;
    for (int64_t pix = k0; pix < k0 + kc;) {
      const int64_t len = imin(Q - q, k0 + kc - pix);
      const int64_t ih0 = flat ? 0 : p * s.stride_h - s.pad_h, iw0 = flat ? q : q * s.stride_w - s.pad_w;
      const T* xn = x + n * img;
      T* d = dst + (pix - k0) * NR;
      const T* row[NR];  // each column's input row (null: in the padding)
      const int64_t sw = s.stride_w;
      for (int64_t jj = 0; jj < nr; ++jj) {
        const int64_t ih = ih0 + roff[jj];
        row[jj] = ih < 0 || ih >= s.H ? nullptr : xn + coff[jj] + ih * rowlen;
      }
      if (sw == 1 || sw == 2) {
        // Chunks of up to W pixels, each column's stretch loaded as a vector (two at stride 2,
        // deinterleaved) and W pixels x W columns transposed in registers. [v0, v1): whole chunks
        // whose loads stay inside every column's row, plain loads; the pixels outside it (a whole
        // short row: with AVX-512's 16 lanes every row of 14 or fewer output pixels) masked loads,
        // lanes past the chunk or outside the row reading 0. Padding rows and columns past nr are 0.
        int64_t lo = 0, hi = len;  // the pixels whose vector loads stay inside every column's row
        const int64_t span = rowlen - (sw - 1);  // (a stride-2 load reads one past its last)
        auto narrow = [&](int64_t off) {
          int64_t l, h;
          valid_range(iw0 + off, sw, span, len, l, h);
          lo = imax(lo, l), hi = imin(hi, h);
        };
        if (tabled)  // every offset, whether or not its columns' rows are in the padding
          for (int64_t sc = 0; sc < s.S; ++sc) narrow(sc * s.dil_w);
        else
          for (int64_t jj = 0; jj < nr; ++jj)
            if (row[jj]) narrow(soff[jj]);
        int64_t v0 = 0, v1 = 0;
        if (nr == NR && hi - lo >= W) v0 = lo, v1 = lo + (hi - lo) / W * W;
        LaneMask<T> first[kTabledOffsets], second[kTabledOffsets];  // per column offset (tabled)
        for (int64_t t0 = 0; t0 < len;) {
          const bool inside = t0 >= v0 && t0 < v1;
          const int64_t cnt = imin(W, (t0 < v0 ? v0 : inside ? v1 : len) - t0);
          // the masks of a load at a (first W elements, and the next W at stride 2)
          auto masks = [&](int64_t a, LaneMask<T>& m0, LaneMask<T>& m1) {
            const int64_t end = imin(sw * cnt, rowlen - a);
            m0 = LaneMask<T>(-a, end);
            m1 = LaneMask<T>(-a - W, end - W);
          };
          if (!inside && tabled)
            for (int64_t sc = 0; sc < s.S; ++sc) masks(iw0 + sc * s.dil_w + t0 * sw, first[sc], second[sc]);
          for (int cb = 0; cb < NR; cb += W) {
            vec_t<T> r[W];
            for (int l = 0; l < W; ++l) {
              const int64_t jj = cb + l;
              r[l] = vec_t<T>{};
              if (jj >= nr || !row[jj]) continue;
              const int64_t a = iw0 + soff[jj] + t0 * sw;
              const T* p = row[jj] + a;
              if (inside) {
                r[l] = sw == 1 ? vload(p) : vevens(vload(p), vload(p + W));
              } else {
                LaneMask<T> m0, m1;
                if (tabled)
                  m0 = first[col_of[jj]], m1 = second[col_of[jj]];
                else
                  masks(a, m0, m1);
                r[l] = sw == 1 ? vload_masked(p, m0) : vevens(vload_masked(p, m0), vload_masked(p + W, m1));
              }
            }
            vtranspose(r);
            for (int m = 0; m < cnt; ++m) vstore(d + (t0 + m) * NR + cb, r[m]);
          }
          t0 += cnt;
        }
      } else {
        for (int64_t jj = 0; jj < nr; ++jj) {
          if (!row[jj]) {
            for (int64_t t = 0; t < len; ++t) d[t * NR + jj] = T(0);
            continue;
          }
          gather_row(row[jj], iw0 + soff[jj], sw, rowlen, len, d + jj, int64_t(NR));
        }
      }
      pix += len;
      if ((q += len) == Q) {
        q = 0;
        if (++p == rows) p = 0, ++n;
      }
    }
  }
};

// A = col^T[N*P*Q, C'*R*S] (the transposed forward): element ((n, p, q), (c, r, s)) =
// x[n, c, p*sh + row_off[r], q*sw + col_off[s]] (0 outside the plane); MR pixels per panel. Each
// pixel's tap offsets are tabled once per panel (up to kTabledTaps taps), so a panel row costs a
// table read and a load per pixel, not two range checks (a per-element check made the pack ~20% of
// a 960 -> 160 1x1 layer).
constexpr int64_t kTabledTaps = 64;
template <typename T>
struct Im2colPixelPackA {
  TapGrid t;
  const T* x;
  void operator()(int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) const {
    constexpr int MR = GemmBlocking<T>::MR;
    const int64_t PQ = t.P * t.Q, HW = t.H * t.W, img = t.C * HW, RS = t.R * t.S;
    const T* base[MR];
    int64_t ih0[MR], iw0[MR];
    for (int64_t i = 0; i < mr; ++i) {
      const int64_t pix = i0 + i, n = pix / PQ, pq = pix % PQ;
      base[i] = x + n * img, ih0[i] = (pq / t.Q) * t.sh, iw0[i] = (pq % t.Q) * t.sw;
    }
    const auto tap_offset = [&](int64_t i, int64_t r, int64_t sc) -> int64_t {  // -1: in the padding
      const int64_t ih = ih0[i] + t.row_off[r], iw = iw0[i] + t.col_off[sc];
      return ih >= 0 && ih < t.H && iw >= 0 && iw < t.W ? ih * t.W + iw : -1;
    };
    const bool tabled = RS <= kTabledTaps;
    int64_t off[kTabledTaps][MR], cur[MR];
    if (tabled)
      for (int64_t u = 0; u < RS; ++u)
        for (int64_t i = 0; i < mr; ++i) off[u][i] = tap_offset(i, u / t.S, u % t.S);
    int64_t c = k0 / RS, rs = k0 % RS;
    for (int64_t k = 0; k < kc; ++k) {
      if (!tabled)
        for (int64_t i = 0; i < mr; ++i) cur[i] = tap_offset(i, rs / t.S, rs % t.S);
      const int64_t* o = tabled ? off[rs] : cur;
      T* d = dst + k * MR;
      for (int64_t i = 0; i < mr; ++i) d[i] = o[i] >= 0 ? base[i][c * HW + o[i]] : T(0);
      for (int64_t i = mr; i < MR; ++i) d[i] = T(0);
      if (++rs == RS) rs = 0, ++c;
    }
  }
};

// C = Y_g^T (pixels x channels) of the transposed forward. A tile's K blocks are summed in scratch,
// tile by tile (vector adds); after its last one the tile is stored transposed into y (NCHW) with
// the channel bias, once (the epilogue follows in one vector pass over y: per element here, its
// activation switch cost more than the pixel-row layout saved on 160-channel layers).
template <typename T>
struct PixelRowsOut {
  T* y;                // the group's first output channel in image 0
  int64_t PQ, img;     // pixels per image; image stride of y
  const T* bias;       // per channel (column), or null
  T* acc;              // scratch: m_panels x n_panels tiles of MR x NR
  int64_t n_panels;
  double* row_sums = nullptr;  // (none: gemm_run asks)
  void prefetch(int64_t, int64_t, int64_t) const {}
  // (the tile's pixels may span images: each row finds its own)
  void operator()(int64_t i0, int64_t mr, int64_t j0, int64_t nr, const T* tile, bool first, bool last) const {
    constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR, W = Simd<T>::W;
    T* a = acc + ((i0 / MR) * n_panels + j0 / NR) * (MR * NR);
    if (!first)
      for (int e = 0; e < MR * NR; e += W) vstore(a + e, vload(a + e) + vload(tile + e));
    else if (!last)
      for (int e = 0; e < MR * NR; e += W) vstore(a + e, vload(tile + e));
    if (!last) return;
    const T* v = first ? tile : a;
    for (int64_t i = 0; i < mr; ++i) {
      const int64_t pix = i0 + i, n = pix / PQ;
      T* col = y + n * img + (pix - n * PQ) + j0 * PQ;
      for (int64_t j = 0; j < nr; ++j) col[j * PQ] = v[i * NR + j] + (bias ? bias[j0 + j] : T(0));
    }
  }
  void finished(int64_t, int64_t, int64_t, int64_t, int64_t) const {}
};

// The transposed forward pays where NR-wide pixel panels are mostly padding (see the top): its
// useful share of the padded GEMM beats the usual one by 10% (at 5%, 14x14 layers lost), and the
// scratch of tiles stays small.
constexpr double kPixelRowsMinGain = 1.1;
constexpr int64_t kPixelRowsMaxScratch = int64_t(256) << 10;  // elements
// Below this many weights per group the call's fixed costs (pixel panels packed per K block, the
// scratch, the epilogue pass) eat the gain (MobileNetV2's 960 -> 160 1x1 at 7x7 lost 3-25%).
constexpr int64_t kPixelRowsMinWeights = int64_t(256) << 10;
template <typename T>
bool im2col_pixel_rows(const ConvShape& s) {
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  const int64_t M = s.N * s.P * s.Q, Kg = s.Kg();
  if (M <= 0 || Kg <= 0 || Kg * s.Cg() * s.R * s.S < kPixelRowsMinWeights) return false;
  const int64_t m6 = ceil_div(M, MR) * MR, m16 = ceil_div(M, NR) * NR;
  const int64_t k6 = ceil_div(Kg, MR) * MR, k16 = ceil_div(Kg, NR) * NR;
  const double usual = double(M) / double(m16) * double(Kg) / double(k6);
  const double rows = double(M) / double(m6) * double(Kg) / double(k16);
  return rows > kPixelRowsMinGain * usual && m6 * k16 <= kPixelRowsMaxScratch;
}

// Prepared weights: a header of kPreparedHeader elements (layout, Kg, Cg*R*S, G), then per group
// the A panels of W_g (layout 0) or the B panels of W_g^T (layout 1, pixel rows). The forward checks
// the header against the call, so weights packed for another shape or layout never run.
constexpr int64_t kPreparedHeader = 16;

// The forward convolution's tap offsets: row_off[r] = r*dil_h - pad_h, col_off[s] = s*dil_w - pad_w.
struct ForwardTaps {
  Workspace tables;
  explicit ForwardTaps(const ConvShape& s) : tables(checked_bytes(s.R + s.S, sizeof(int64_t))) {
    int64_t* t = tables.as<int64_t>();
    for (int64_t r = 0; r < s.R; ++r) t[r] = r * s.dil_h - s.pad_h;
    for (int64_t c = 0; c < s.S; ++c) t[s.R + c] = c * s.dil_w - s.pad_w;
  }
  TapGrid grid(const ConvShape& s) const {
    const int64_t* t = tables.as<int64_t>();
    return TapGrid{s.C, s.H, s.W, s.P, s.Q, s.stride_h, s.stride_w, s.R, s.S, t, t + s.R};
  }
};

// Grad-input by phases: gx[h] gathers gy[p] * w[r] over p*sh - ph + r*dh = h. The rows h of one
// residue class h = h0 + sh*u (0 <= h0 < sh) all take the same taps, those with
// (h0 + ph - r*dh) % sh == 0, at p = u + (h0 + ph - r*dh)/sh: a stride-1 convolution of gy with a
// flipped sub-filter. So each of the sh*sw classes is one GEMM on the forward machinery,
//   gx_class[Cg, N*U*V] = W'_class[Cg, Kg*taps] . col(gy)[Kg*taps, N*U*V],
// with no column buffer and no col2im scatter; a class with no taps is zero. Stride 1 is one class
// (the transposed convolution with the flipped filter).
struct PhaseAxis {
  int64_t start, count;  // first row of the class, rows in it
  int64_t taps;          // taps that reach it
};

// Taps of class h0 along one axis, written to tap[] / off[] (capacity R); returns the class.
PYCONV_INLINE PhaseAxis phase_axis(int64_t h0, int64_t H, int64_t st, int64_t pad, int64_t dil, int64_t R,
                                   int64_t* tap, int64_t* off) {
  PhaseAxis a{h0, h0 < H ? ceil_div(H - h0, st) : 0, 0};
  // r descending: the offsets ascend, so a packed panel walks gy forward in memory.
  for (int64_t r = R - 1; r >= 0; --r) {
    const int64_t num = h0 + pad - r * dil;  // p*st for u = 0
    const int64_t rem = ((num % st) + st) % st;
    if (rem != 0) continue;
    tap[a.taps] = r;
    off[a.taps] = (num - rem) / st;  // exact
    ++a.taps;
  }
  return a;
}

// A = W'[Cg, Kg*tr*ts] of group g (w points at the group's first filter): element (c, (k, i, j)) is
// w[k, c, rtap[i], stap[j]].
template <typename T>
struct PhaseFilterPackA {
  const T* w;
  int64_t Cg, R, S, tr, ts;
  const int64_t *rtap, *stap;
  void operator()(int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) const {
    constexpr int MR = GemmBlocking<T>::MR;
    // (k, i, j) stepped, not divided out of k0 + kk: three divisions per row cost ~15% of a
    // 512-channel layer's grad-input
    int64_t k = k0 / (tr * ts), i = (k0 / ts) % tr, j = k0 % ts;
    const int64_t RS = R * S;
    const T* wc = w + i0 * RS;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const T* src = wc + (k * Cg * R + rtap[i]) * S + stap[j];
      T* d = dst + kk * MR;
      if (mr == MR)
        for (int c = 0; c < MR; ++c) d[c] = src[c * RS];
      else {
        for (int64_t c = 0; c < mr; ++c) d[c] = src[c * RS];
        for (int64_t c = mr; c < MR; ++c) d[c] = T(0);
      }
      if (++j == ts) {
        j = 0;
        if (++i == tr) i = 0, ++k;
      }
    }
  }
};

// Columns j = (n, u, v) of a class: gx offset n*img + (h0 + sh*u)*W + w0 + sw*v. With stride 1 the
// class is the whole plane (offset n*img + l, one division: this runs per tile).
struct PhaseOutColumns {
  int64_t img, U, V, W, h0, w0, sh, sw;
  bool dense() const { return sh == 1 && sw == 1; }
  int64_t operator()(int64_t j) const {
    const int64_t L = U * V, n = j / L, l = j - n * L;
    if (dense()) return n * img + l;
    const int64_t u = l / V, v = l - u * V;
    return n * img + (h0 + sh * u) * W + w0 + sw * v;
  }
  int64_t run(int64_t j) const {  // a row of the class
    if (dense()) return U * V - j % (U * V);
    return V - j % V;
  }
  int64_t step() const { return dense() ? 1 : sw; }
};

// Calls fn(PhaseAxis rows, PhaseAxis cols, row taps/offsets, col taps/offsets) for each class.
template <class Fn>
void for_each_phase(const ConvShape& s, Fn&& fn) {
  Workspace tables(checked_bytes(2 * (s.R + s.S), sizeof(int64_t)));
  int64_t* rtap = tables.as<int64_t>();
  int64_t *roff = rtap + s.R, *stap = roff + s.R, *soff = stap + s.S;
  for (int64_t h0 = 0; h0 < s.stride_h; ++h0) {
    const PhaseAxis rows = phase_axis(h0, s.H, s.stride_h, s.pad_h, s.dil_h, s.R, rtap, roff);
    if (rows.count == 0) continue;
    for (int64_t w0 = 0; w0 < s.stride_w; ++w0) {
      const PhaseAxis cols = phase_axis(w0, s.W, s.stride_w, s.pad_w, s.dil_w, s.S, stap, soff);
      if (cols.count == 0) continue;
      fn(rows, cols, rtap, roff, stap, soff);
    }
  }
}

// When dcol = W_g^T . dY (Cg*R*S rows, B = dY itself: one efficient GEMM) then col2im beats the
// phase GEMMs: for strided layers (their phases have short reductions, K*taps/stride^2, and write
// gx with a stride: 1x1 stride 2 measured 42 vs 10 GFLOP/s, 3x3 stride 2 55 vs 30) and for few input
// channels (the phase GEMMs have only Cg rows). The buffer holds a few images (kDcolChunkBytes,
// at least one); a layer whose single image's dcol is larger than kDcolImageMax takes phases.
constexpr int64_t kPhaseMinChannels = 16;
constexpr int64_t kDcolChunkBytes = int64_t(4) << 20;  // 16 MiB cost the stem's training step 7 MiB of peak, for no speed
constexpr int64_t kDcolImageMax = int64_t(64) << 20;

// Bytes of one image's dcol (Cg*R*S x P*Q) in one group.
template <typename T>
int64_t dcol_image_bytes(const ConvShape& s) {
  return s.Cg() * s.R * s.S * s.P * s.Q * int64_t(sizeof(T));
}

template <typename T>
bool grad_input_by_dcol(const ConvShape& s) {
  const bool strided = s.stride_h > 1 || s.stride_w > 1;
  return (strided || s.Cg() < kPhaseMinChannels) && dcol_image_bytes<T>(s) <= kDcolImageMax;
}

// Images per grad-input chunk: dcol of one chunk stays under kDcolChunkBytes (at least one image).
template <typename T>
int64_t dgrad_chunk_images(const ConvShape& s) {
  return imax(1, imin(s.N, kDcolChunkBytes / imax(1, dcol_image_bytes<T>(s))));
}

// gx[n0+nl, g*Cg + c] = sum_{r,s} scatter of dcol rows (c,r,s), for the images of one chunk.
template <typename T>
void col2im(const ConvShape& s, int64_t g, int64_t n0, int64_t nb, const T* dcol, int64_t ldcol, T* gx) {
  const int64_t Cg = s.Cg(), HW = s.H * s.W, PQ = s.P * s.Q;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t item = 0; item < nb * Cg; ++item) {
    const int64_t nl = item / Cg, c = item % Cg;
    T* plane = gx + ((n0 + nl) * s.C + g * Cg + c) * HW;
    for (int64_t i = 0; i < HW; ++i) plane[i] = T(0);
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t sc = 0; sc < s.S; ++sc) {
        const T* crow = dcol + ((c * s.R + r) * s.S + sc) * ldcol + nl * PQ;
        const int64_t iw0 = sc * s.dil_w - s.pad_w;
        int64_t lo, hi;
        valid_range(iw0, s.stride_w, s.W, s.Q, lo, hi);
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
          if (ih < 0 || ih >= s.H) continue;
          T* prow = plane + ih * s.W + iw0;
          const T* src = crow + p * s.Q;
          for (int64_t q = lo; q < hi; ++q) prow[q * s.stride_w] += src[q];
        }
      }
  }
}

}  // namespace

template <typename T>
int conv_im2col_prepared_layout(const ConvShape& s) {
  return im2col_pixel_rows<T>(s) ? 1 : 0;
}

namespace {
template <typename T>
int64_t prepared_group_elems(const ConvShape& s, int layout) {
  const int64_t CRS = s.Cg() * s.R * s.S;
  return layout ? gemm_packed_b_elems<T>(CRS, s.Kg()) : gemm_packed_a_elems<T>(s.Kg(), CRS);
}
}  // namespace

template <typename T>
int64_t conv_im2col_prepared_numel(const ConvShape& s) {
  return kPreparedHeader + s.G * prepared_group_elems<T>(s, conv_im2col_prepared_layout<T>(s));
}

template <typename T>
void conv_im2col_prepare_weight(const ConvShape& s, const T* w, T* prepared) {
  const int layout = conv_im2col_prepared_layout<T>(s);
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, per_group = prepared_group_elems<T>(s, layout);
  for (int64_t e = 0; e < kPreparedHeader; ++e) prepared[e] = T(0);
  prepared[0] = T(layout), prepared[1] = T(Kg), prepared[2] = T(CRS), prepared[3] = T(s.G);
  T* panels = prepared + kPreparedHeader;
  for (int64_t g = 0; g < s.G; ++g) {
    if (layout)  // W_g^T: element (k, j) = w[j, k]
      gemm_pack_b<T>(CRS, Kg, StridedPackB<T>{w + g * Kg * CRS, 1, CRS}, panels + g * per_group);
    else
      gemm_pack_a<T>(Kg, CRS, StridedPackA<T>{w + g * Kg * CRS, CRS, 1}, panels + g * per_group);
  }
}

template <typename T>
bool conv_im2col_prepared_fits(const ConvShape& s, const T* prepared) {
  return prepared[0] == T(conv_im2col_prepared_layout<T>(s)) && prepared[1] == T(s.Kg()) &&
         prepared[2] == T(s.Cg() * s.R * s.S) && prepared[3] == T(s.G);
}

template <typename T>
void conv_im2col_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                         const T* prepared, const ConvEpilogue<T>& ep) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (stats)
    for (int64_t i = 0; i < 2 * s.K; ++i) stats[i] = 0;
  if (s.N == 0 || s.K == 0 || PQ == 0) return;
  const ForwardTaps taps(s);
  const int nthr = num_threads();
  const int layout = prepared ? int(prepared[0]) : 0;
  if (prepared) prepared += kPreparedHeader;
  if (layout == 1) {  // pixels as rows (see the top); prepared inference only, so no statistics
    const int64_t M = s.N * PQ, m_panels = ceil_div(M, GemmBlocking<T>::MR);
    const int64_t n_panels = ceil_div(Kg, GemmBlocking<T>::NR), per_group = prepared_group_elems<T>(s, 1);
    Workspace acc(checked_bytes(m_panels * n_panels * GemmBlocking<T>::MR * GemmBlocking<T>::NR, sizeof(T)));
    for (int64_t g = 0; g < s.G; ++g) {
      const Im2colPixelPackA<T> pa{taps.grid(s), x + g * Cg * HW};
      const PixelRowsOut<T> out{y + g * Kg * PQ, PQ, s.K * PQ, b ? b + g * Kg : nullptr, acc.as<T>(), n_panels};
      const StridedPackB<T> unused{nullptr, 0, 0};
      gemm_run<T>(M, Kg, CRS, pa, unused, out, nthr, nullptr, false, prepared + g * per_group);
    }
    if (ep.active()) {
#pragma omp parallel for num_threads(nthr) schedule(static)
      for (int64_t row = 0; row < s.N * s.K; ++row) epilogue_apply(ep, y + row * PQ, PQ);
    }
    return;
  }
  const int64_t chunks = gemm_chunks<T>(s.N * PQ, nthr);
  Workspace sums_ws(stats ? checked_bytes(chunks * 2 * Kg * 4, sizeof(double)) : 0);
  for (int64_t g = 0; g < s.G; ++g) {
    const StridedPackA<T> pa{w + g * Kg * CRS, CRS, 1};
    MatrixOut<T, BatchedOutColumns> out{y + g * Kg * PQ, PQ, BatchedOutColumns{s.K * PQ, PQ}, T(1), T(0),
                                        b ? b + g * Kg : nullptr};
    out.ep = ep;
    if (stats) {
      out.row_sums = sums_ws.as<double>(), out.sums_rows = Kg;
      for (int64_t e = 0; e < chunks * 2 * Kg * 4; ++e) out.row_sums[e] = 0;
    }
    const T* ag = prepared ? prepared + g * prepared_group_elems<T>(s, 0) : nullptr;
    if (is_pointwise(s)) {
      const BatchedPackB<T> pb{BatchedColumns<T>{x + g * Cg * HW, s.C * HW, HW, HW}};
      gemm_run<T>(Kg, s.N * PQ, CRS, pa, pb, out, nthr, ag);
    } else {
      const Im2colPackB<T> pb{taps.grid(s), x + g * Cg * HW};
      gemm_run<T>(Kg, s.N * PQ, CRS, pa, pb, out, nthr, ag);
    }
    if (stats)  // the chunks in order: the same sums at the same thread count
      for (int64_t jc = 0; jc < chunks; ++jc)
        for (int64_t k = 0; k < Kg; ++k) {
          stats[g * Kg + k] += sum4d(out.row_sums + (jc * 2 * Kg + k) * 4);
          stats[s.K + g * Kg + k] += sum4d(out.row_sums + ((jc * 2 + 1) * Kg + k) * 4);
        }
  }
}

template <typename T>
void conv_im2col_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (s.N == 0 || s.C == 0 || HW == 0) return;
  if (is_pointwise(s)) {
    // dcol is gx itself: gx_g[Cg, N*HW] = W_g^T . dY_g.
    for (int64_t g = 0; g < s.G; ++g) {
      const StridedPackA<T> pa{w + g * Kg * CRS, 1, CRS};
      const BatchedPackB<T> pb{BatchedColumns<T>{gy + g * Kg * PQ, s.K * PQ, PQ, PQ}};
      const MatrixOut<T, BatchedOutColumns> out{gx + g * Cg * HW, HW, BatchedOutColumns{s.C * HW, HW}, T(1),
                                                T(0), nullptr};
      gemm_run<T>(Cg, s.N * PQ, Kg, pa, pb, out);
    }
    return;
  }
  if (grad_input_by_dcol<T>(s)) {
    const int64_t nb_max = dgrad_chunk_images<T>(s);
    Workspace dcol(checked_bytes(CRS * nb_max * PQ, sizeof(T)));
    for (int64_t g = 0; g < s.G; ++g)
      for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
        const int64_t nb = imin(nb_max, s.N - n0), ld = nb * PQ;
        const StridedPackA<T> pa{w + g * Kg * CRS, 1, CRS};
        const BatchedPackB<T> pb{BatchedColumns<T>{gy + n0 * s.K * PQ + g * Kg * PQ, s.K * PQ, PQ, PQ}};
        const MatrixOut<T, DenseColumns> out{dcol.as<T>(), ld, DenseColumns{}, T(1), T(0), nullptr};
        gemm_run<T>(CRS, ld, Kg, pa, pb, out);
        col2im(s, g, n0, nb, dcol.as<T>(), ld, gx);
      }
    return;
  }
  for_each_phase(s, [&](const PhaseAxis& rows, const PhaseAxis& cols, const int64_t* rtap, const int64_t* roff,
                        const int64_t* stap, const int64_t* soff) {
    const TapGrid grid{s.K, s.P, s.Q, rows.count, cols.count, 1, 1, rows.taps, cols.taps, roff, soff};
    const PhaseOutColumns cmap{s.C * HW, rows.count, cols.count, s.W, rows.start, cols.start, s.stride_h,
                               s.stride_w};
    for (int64_t g = 0; g < s.G; ++g) {
      const PhaseFilterPackA<T> pa{w + g * Kg * CRS, Cg, s.R, s.S, rows.taps, cols.taps, rtap, stap};
      const Im2colPackB<T> pb{grid, gy + g * Kg * PQ};
      const MatrixOut<T, PhaseOutColumns> out{gx + g * Cg * HW, HW, cmap, T(1), T(0), nullptr};
      gemm_run<T>(Cg, s.N * rows.count * cols.count, Kg * rows.taps * cols.taps, pa, pb, out);
    }
  });
}

template <typename T>
void conv_im2col_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (gb) channel_sums(gy, s.N, s.K, PQ, gb);
  if (!gw || s.K == 0 || CRS == 0) return;
  const int nthr = num_threads();  // one count for the schedule and its workspace
  for (int64_t g = 0; g < s.G; ++g) {
    const BatchedPackA<T> pa{BatchedColumns<T>{gy + g * Kg * PQ, s.K * PQ, PQ, PQ}};
    const Im2colTransposedPackB<T> pb{s, x + g * Cg * HW};
    const MatrixOut<T, DenseColumns> out{gw + g * Kg * CRS, CRS, DenseColumns{}, T(1), T(0), nullptr};
    gemm_run<T>(Kg, CRS, s.N * PQ, pa, pb, out, nthr, nullptr, true);
  }
}

template <typename T>
int64_t conv_im2col_workspace_bytes(const ConvShape& s, int pass) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const int nthr = num_threads();
  int64_t elems = 0;
  if (pass == 0) {
    elems = gemm_workspace_elems<T>(Kg, s.N * PQ, CRS, nthr);
  } else if (pass == 1) {
    if (is_pointwise(s)) {
      elems = gemm_workspace_elems<T>(s.Cg(), s.N * PQ, Kg, nthr);
    } else if (grad_input_by_dcol<T>(s)) {
      const int64_t nb = dgrad_chunk_images<T>(s);
      elems = CRS * nb * PQ + gemm_workspace_elems<T>(CRS, nb * PQ, Kg, nthr);
    } else {  // the largest phase GEMM (they run one after another)
      for_each_phase(s, [&](const PhaseAxis& rows, const PhaseAxis& cols, const int64_t*, const int64_t*,
                            const int64_t*, const int64_t*) {
        elems = imax(elems, gemm_workspace_elems<T>(s.Cg(), s.N * rows.count * cols.count,
                                                    Kg * rows.taps * cols.taps, nthr));
      });
    }
  } else if (gemm_splits_k<T>(Kg, CRS, s.N * PQ, nthr)) {
    elems = gemm_split_k_workspace_elems<T>(Kg, CRS, s.N * PQ, nthr);
  } else {
    elems = gemm_workspace_elems<T>(Kg, CRS, s.N * PQ, nthr);
  }
  return elems * int64_t(sizeof(T));
}

#define PYCONV_INSTANTIATE(T)                                                                                  \
  template void conv_im2col_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, double*, const T*,  \
                                       const ConvEpilogue<T>&);                                               \
  template int64_t conv_im2col_prepared_numel<T>(const ConvShape&);                                           \
  template int conv_im2col_prepared_layout<T>(const ConvShape&);                                              \
  template bool conv_im2col_prepared_fits<T>(const ConvShape&, const T*);                                     \
  template void conv_im2col_prepare_weight<T>(const ConvShape&, const T*, T*);                                \
  template void conv_im2col_backward_input<T>(const ConvShape&, const T*, const T*, T*);                      \
  template void conv_im2col_backward_weight<T>(const ConvShape&, const T*, const T*, T*, T*);                 \
  template int64_t conv_im2col_workspace_bytes<T>(const ConvShape&, int);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
