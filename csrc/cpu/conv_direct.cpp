// Direct convolution, NCHW, float32 / float64, any stride, padding, dilation and group count.
// The forward of groups with at least a SIMD vector of channels on each side runs the channel-blocked
// kernel of conv_blocked.cpp; the loops here serve narrower groups and both gradients.
//
//   forward      y[n,k,p,q]  = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-input   gx = conv_stride1( zero_insert(gy, sh, sw), rot180(w) with k and c swapped )
//                (the transposed convolution, run through the forward path)
//   grad-weight  gw[k,c,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-bias    gb[k] = sum_{n,p,q} gy[n,k,p,q]
//
// Each image is first copied into a zero-padded, stride-deinterleaved row buffer (RowPack), so the
// inner loops do contiguous vector loads with no bounds tests whatever the stride, padding or
// dilation. The forward micro-kernel holds a KB (output channels) x QV*W (output columns) tile of
// accumulators in registers; the weight-gradient kernel a KB x SB (filter columns) tile of vectors
// reduced along the output row. Depthwise problems (one channel per group) go to
// conv_depthwise.cpp, whose kernels vectorize over the plane instead of over channels.
#include "cpu/conv_direct.h"

#include "common/runtime.h"
#include "cpu/conv_blocked.h"
#include "cpu/conv_depthwise.h"
#include "cpu/epilogue.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

#include <omp.h>

namespace pyconv {
namespace PYCONV_ISA {
namespace {

// One channel of the virtual padded image: vimg(i, j) = src((i-top)/ins_h, (j-left)/ins_w) where the
// divisions are exact and in range, else 0. Element (i, j) is stored at [i][j % phases][j / phases].
struct RowPack {
  int64_t Hsrc, Wsrc, ins_h, ins_w, top, left;
  int64_t Hb, phases, Wl;
  int64_t row() const { return phases * Wl; }
  int64_t plane() const { return Hb * phases * Wl; }
};

// Packs row cr (= channel * Hb + i) of the virtual padded image.
template <typename T>
void pack_row(const RowPack& g, const T* src, int64_t cr, T* out) {
  const int64_t len = g.row();
  const int64_t c = cr / g.Hb, i = cr % g.Hb;
  const int64_t si = i - g.top;
  const bool has_row = si >= 0 && si % g.ins_h == 0 && si / g.ins_h < g.Hsrc;
  if (!has_row) {
    for (int64_t t = 0; t < len; ++t) out[t] = T(0);
    return;
  }
  const T* in = src + (c * g.Hsrc + si / g.ins_h) * g.Wsrc;
  if (g.phases == 1 && g.ins_w == 1) {
    // Plain padded copy: [0, left) zeros, the source row, zeros to the end.
    const int64_t w0 = imax(0, -g.left);
    const int64_t j0 = imax(0, g.left);
    const int64_t n = imax(0, imin(g.Wsrc - w0, len - j0));
    for (int64_t t = 0; t < j0; ++t) out[t] = T(0);
    for (int64_t t = 0; t < n; ++t) out[j0 + t] = in[w0 + t];
    for (int64_t t = j0 + n; t < len; ++t) out[t] = T(0);
    return;
  }
  for (int64_t t = 0; t < len; ++t) out[t] = T(0);
  for (int64_t w = 0; w < g.Wsrc; ++w) {
    const int64_t j = g.left + w * g.ins_w;
    if (j < 0) continue;
    if (j >= len) break;
    out[(j % g.phases) * g.Wl + j / g.phases] = in[w];
  }
}

template <typename T>
void pack_rows(const RowPack& g, int64_t channels, const T* src, T* dst) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t cr = 0; cr < channels * g.Hb; ++cr) pack_row(g, src, cr, dst + cr * g.row());
}

// A convolution over packed rows: Cin channels per group in, Kout per group out.
struct Core {
  int64_t G, Cin, Kout, R, S, P, Q, sh, dh;
  RowPack pk;
  const int64_t* soff;  // offset of filter column s inside a packed row
};

// Filters as [G][ceil(Kout/KB)][Cin][R][S][KB], zero beyond Kout. `transposed` reads the grad-input
// filter: output channel = forward input channel, input channel = forward output channel, rotated.
template <typename T>
void pack_filters(const T* w, int64_t G, int64_t Kout, int64_t Cin, int64_t R, int64_t S, int KB,
                  bool transposed, T* dst) {
  const int64_t nkb = ceil_div(Kout, KB);
  const int64_t RS = R * S;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t gb = 0; gb < G * nkb; ++gb) {
    const int64_t g = gb / nkb, kb = gb % nkb;
    T* out = dst + gb * Cin * RS * KB;
    for (int64_t c = 0; c < Cin; ++c)
      for (int64_t rs = 0; rs < RS; ++rs)
        for (int k = 0; k < KB; ++k) {
          const int64_t ko = kb * KB + k;
          T v = T(0);
          if (ko < Kout) {
            v = transposed ? w[((g * Cin + c) * Kout + ko) * RS + (RS - 1 - rs)]
                           : w[((g * Kout + ko) * Cin + c) * RS + rs];
          }
          out[(c * RS + rs) * KB + k] = v;
        }
  }
}

// Output row p of output channels [kb*KB, kb*KB+KB) of group g, from the group's packed rows xg.
template <typename T, int KB, int QV>
PYCONV_INLINE void conv_tile_row(const Core& cc, const T* xg, const T* wp, const T* bias, T* y, int64_t g,
                                 int64_t p, int64_t kb, double* part, const ConvEpilogue<T>& ep) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  constexpr int QT = QV * W;
  const int64_t nkb = ceil_div(cc.Kout, KB);
  const int64_t RS = cc.R * cc.S, row = cc.pk.row(), plane = cc.pk.plane();
  const int64_t k0 = kb * KB;
  const int kvalid = static_cast<int>(imin(KB, cc.Kout - k0));
  const T* wblk = wp + (g * nkb + kb) * cc.Cin * RS * KB;
  const T* xp = xg + p * cc.sh * row;
  T* yk = y + ((g * cc.Kout + k0) * cc.P + p) * cc.Q;
  T bk[KB];
  for (int k = 0; k < KB; ++k) bk[k] = (bias && k < kvalid) ? bias[g * cc.Kout + k0 + k] : T(0);
  for (int64_t q0 = 0; q0 < cc.Q; q0 += QT) {
    V acc[KB][QV];
    for (int k = 0; k < KB; ++k)
      for (int v = 0; v < QV; ++v) acc[k][v] = V{};
    for (int64_t c = 0; c < cc.Cin; ++c) {
      const T* xc = xp + c * plane + q0;
      const T* wc = wblk + c * RS * KB;
      for (int64_t r = 0; r < cc.R; ++r) {
        const T* xr = xc + r * cc.dh * row;
        const T* wr = wc + r * cc.S * KB;
        for (int64_t s = 0; s < cc.S; ++s) {
          const T* xs = xr + cc.soff[s];
          V xv[QV];
          for (int v = 0; v < QV; ++v) xv[v] = vload(xs + v * W);
          const T* ws = wr + s * KB;
          for (int k = 0; k < KB; ++k) {
            const V wv = vbroadcast(ws[k]);
            for (int v = 0; v < QV; ++v) acc[k][v] += wv * xv[v];
          }
        }
      }
    }
    const int64_t qn = imin(QT, cc.Q - q0);
    for (int k = 0; k < kvalid; ++k) {
      T* yo = yk + k * cc.P * cc.Q + q0;
      const V bv = vbroadcast(bk[k]);
      if (qn == QT) {
        for (int v = 0; v < QV; ++v) vstore(yo + v * W, acc[k][v] + bv);
      } else {
        T tmp[QT];
        for (int v = 0; v < QV; ++v) vstore(tmp + v * W, acc[k][v] + bv);
        for (int64_t i = 0; i < qn; ++i) yo[i] = tmp[i];
      }
    }
  }
  // Epilogue statistics: (sum, sum of squares) of each finished output row, still in L1.
  if (part)
    for (int k = 0; k < kvalid; ++k)
      sum_pair(yk + k * cc.P * cc.Q, yk + k * cc.P * cc.Q, static_cast<const T*>(nullptr), 0.0, 0.0, cc.Q,
               part + 2 * ((g * cc.Kout + k0 + k) * cc.P + p));
  for (int k = 0; k < kvalid; ++k) epilogue_apply(ep, yk + k * cc.P * cc.Q, cc.Q);
}

// Packed rows of one group small enough to stay in a core's L2: each thread packs one
// (image, group) at a time and computes all its outputs while the rows are hot (depthwise and
// other narrow groups), so the input makes one trip through memory.
constexpr int64_t kGroupLocalBytes = 256 * 1024;

// The whole batch: pack, then run the register tile over every (group, row, channel block).
template <typename T, int KB, int QV>
void conv_packed(const Core& cc, int64_t N, const T* src, int64_t in_image, int64_t out_image, const T* wp,
                 const T* bias, T* dst, double* part, const ConvEpilogue<T>& ep) {
  const int64_t part_image = 2 * cc.G * cc.Kout * cc.P;
  auto image_part = [&](int64_t n) { return part ? part + n * part_image : nullptr; };
  const int64_t nkb = ceil_div(cc.Kout, KB);
  const int64_t plane = cc.pk.plane(), group_elems = cc.Cin * plane;
  const int64_t spare = 64;  // the widest tile may over-read a row's last vector
  if (group_elems * int64_t(sizeof(T)) <= kGroupLocalBytes) {
    const int nthr = num_threads();
    Workspace ws(checked_bytes(nthr * (group_elems + spare), sizeof(T)));
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t ng = 0; ng < N * cc.G; ++ng) {
      const int64_t n = ng / cc.G, g = ng % cc.G;
      T* buf = ws.as<T>() + omp_get_thread_num() * (group_elems + spare);
      const T* src_g = src + n * in_image + g * cc.Cin * cc.pk.Hsrc * cc.pk.Wsrc;
      for (int64_t cr = 0; cr < cc.Cin * cc.pk.Hb; ++cr) pack_row(cc.pk, src_g, cr, buf + cr * cc.pk.row());
      for (int64_t p = 0; p < cc.P; ++p)
        for (int64_t kb = 0; kb < nkb; ++kb)
          conv_tile_row<T, KB, QV>(cc, buf, wp, bias, dst + n * out_image, g, p, kb, image_part(n), ep);
    }
    return;
  }
  Workspace xpack(checked_bytes(cc.G * group_elems + spare, sizeof(T)));
  const int64_t tasks = cc.G * cc.P * nkb;
  for (int64_t n = 0; n < N; ++n) {
    pack_rows(cc.pk, cc.G * cc.Cin, src + n * in_image, xpack.as<T>());
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t t = 0; t < tasks; ++t)
      conv_tile_row<T, KB, QV>(cc, xpack.as<T>() + (t / (cc.P * nkb)) * group_elems, wp, bias, dst + n * out_image,
                               t / (cc.P * nkb), (t / nkb) % cc.P, t % nkb, image_part(n), ep);
  }
}

struct Tile {
  int KB, QV;
};

// Register tiles that fit 16 vector registers (KB*QV accumulators + QV inputs + 1 broadcast).
constexpr Tile kTiles[] = {{1, 1}, {1, 2}, {1, 4}, {2, 4}, {3, 3}, {4, 3}, {6, 2}, {12, 1}};

// Pick the tile with the fewest modelled cycles: each step issues KB*QV FMAs and KB+QV loads,
// two of each per cycle; padding of Kout and Q up to the tile is wasted work.
template <typename T>
Tile choose_tile(int64_t Kout, int64_t Q) {
  const int W = Simd<T>::W;
  Tile best = kTiles[0];
  double best_cost = 1e300;
  for (const Tile& t : kTiles) {
    if (t.KB > Kout && t.KB > 1) continue;
    const double steps = double(ceil_div(Kout, t.KB)) * double(ceil_div(Q, t.QV * W));
    const double cost = steps * double(imax(t.KB * t.QV, t.KB + t.QV));
    if (cost < best_cost) best_cost = cost, best = t;
  }
  return best;
}

template <typename T>
void run_conv_packed(const Tile& tile, const Core& cc, int64_t N, const T* src, int64_t in_image,
                     int64_t out_image, const T* wp, const T* b, T* dst, double* part,
                     const ConvEpilogue<T>& ep) {
#define PYCONV_TILE_CASE(kb, qv) \
  if (tile.KB == kb && tile.QV == qv)  \
    return conv_packed<T, kb, qv>(cc, N, src, in_image, out_image, wp, b, dst, part, ep);
  PYCONV_TILE_CASE(1, 1)
  PYCONV_TILE_CASE(1, 2)
  PYCONV_TILE_CASE(1, 4)
  PYCONV_TILE_CASE(2, 4)
  PYCONV_TILE_CASE(3, 3)
  PYCONV_TILE_CASE(4, 3)
  PYCONV_TILE_CASE(6, 2)
  PYCONV_TILE_CASE(12, 1)
#undef PYCONV_TILE_CASE
}

// Filter-column offsets inside a packed row: column j = q*sw + s*dw lives at
// [(j % sw) * Wl + j / sw], i.e. at q + soff[s].
void column_offsets(int64_t S, int64_t dw, int64_t phases, int64_t Wl, int64_t* soff) {
  for (int64_t s = 0; s < S; ++s) soff[s] = ((s * dw) % phases) * Wl + (s * dw) / phases;
}

// The forward problem's row buffer, wide enough for output columns [0, Qcols).
RowPack forward_pack(const ConvShape& s, int64_t Qcols) {
  RowPack pk{};
  pk.Hsrc = s.H, pk.Wsrc = s.W, pk.ins_h = 1, pk.ins_w = 1, pk.top = s.pad_h, pk.left = s.pad_w;
  pk.Hb = (s.P - 1) * s.stride_h + s.dil_h * (s.R - 1) + 1;
  pk.phases = s.stride_w;
  pk.Wl = ceil_div((Qcols - 1) * s.stride_w + s.dil_w * (s.S - 1) + 1, s.stride_w);
  return pk;
}

// Runs a convolution: pack the filters, then the input rows and the register-tiled kernel.
template <typename T>
void conv_batch(int64_t N, int64_t in_image, int64_t out_image, const T* src, const T* w, bool transposed,
                const T* b, T* dst, Core cc, const Tile& tile, int64_t dw, double* part = nullptr,
                const ConvEpilogue<T>& ep = {}) {
  Workspace soff_ws(checked_bytes(cc.S, sizeof(int64_t)));
  column_offsets(cc.S, dw, cc.pk.phases, cc.pk.Wl, soff_ws.as<int64_t>());
  cc.soff = soff_ws.as<int64_t>();
  const int64_t nkb = ceil_div(cc.Kout, tile.KB);
  Workspace wpack(checked_bytes(cc.G * nkb * cc.Cin * cc.R * cc.S * tile.KB, sizeof(T)));
  pack_filters(w, cc.G, cc.Kout, cc.Cin, cc.R, cc.S, tile.KB, transposed, wpack.as<T>());
  run_conv_packed(tile, cc, N, src, in_image, out_image, wpack.as<T>(), b, dst, part, ep);
}

}  // namespace

template <typename T>
int64_t conv_direct_prepared_numel(const ConvShape& s) {
  return !conv_depthwise_applies(s) && conv_blocked_applies<T>(s) ? conv_blocked_prepared_numel<T>(s) : 0;
}

template <typename T>
void conv_direct_prepare_weight(const ConvShape& s, const T* w, T* prepared) {
  if (conv_direct_prepared_numel<T>(s)) conv_blocked_prepare_weight(s, w, prepared);
}

template <typename T>
bool conv_direct_prepared_fits(const ConvShape& s, const T* prepared) {
  return conv_direct_prepared_numel<T>(s) && conv_blocked_prepared_fits(s, prepared);
}

template <typename T>
void conv_direct_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                         const T* prepared, const ConvEpilogue<T>& ep) {
  if (conv_depthwise_applies(s)) return conv_depthwise_forward(s, x, w, b, y, stats, ep);
  if (conv_blocked_applies<T>(s)) return conv_blocked_forward(s, x, w, b, y, stats, prepared, ep);
  if (stats)
    for (int64_t i = 0; i < 2 * s.K; ++i) stats[i] = 0;
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return;
  const Tile tile = choose_tile<T>(s.Kg(), s.Q);
  const int64_t qt = tile.QV * Simd<T>::W;
  Core cc{s.G, s.Cg(), s.Kg(), s.R, s.S, s.P, s.Q, s.stride_h, s.dil_h,
          forward_pack(s, ceil_div(s.Q, qt) * qt), nullptr};
  if (!stats) return conv_batch(s.N, s.C * s.H * s.W, s.K * s.P * s.Q, x, w, false, b, y, cc, tile, s.dil_w, nullptr, ep);
  // One partial per (image, channel, row), each written by the task that wrote the row, summed
  // here in a fixed order: the statistics do not depend on the thread count.
  Workspace part(checked_bytes(2 * s.N * s.K * s.P, sizeof(double)));
  conv_batch(s.N, s.C * s.H * s.W, s.K * s.P * s.Q, x, w, false, b, y, cc, tile, s.dil_w, part.as<double>(), ep);
  add_channel_partials(part.as<double>(), s.N, s.K, s.P, stats);
}

template <typename T>
void conv_direct_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  if (conv_depthwise_applies(s)) return conv_depthwise_backward_input(s, gy, w, gx);
  if (conv_blocked_backward_input_applies<T>(s)) return conv_blocked_backward_input(s, gy, w, gx);
  if (s.N == 0 || s.C == 0 || s.H == 0 || s.W == 0) return;
  const Tile tile = choose_tile<T>(s.Cg(), s.W);
  const int64_t qt = tile.QV * Simd<T>::W;
  RowPack pk{};
  pk.Hsrc = s.P, pk.Wsrc = s.Q, pk.ins_h = s.stride_h, pk.ins_w = s.stride_w;
  pk.top = s.dil_h * (s.R - 1) - s.pad_h;
  pk.left = s.dil_w * (s.S - 1) - s.pad_w;
  pk.Hb = s.H + s.dil_h * (s.R - 1);
  pk.phases = 1;
  pk.Wl = ceil_div(s.W, qt) * qt + s.dil_w * (s.S - 1);
  Core cc{s.G, s.Kg(), s.Cg(), s.R, s.S, s.H, s.W, 1, s.dil_h, pk, nullptr};
  conv_batch(s.N, s.K * s.P * s.Q, s.C * s.H * s.W, gy, w, true, static_cast<const T*>(nullptr), gx, cc,
             tile, s.dil_w);
}

namespace {

// gw[k0..k0+KB, c, r, s0..s0+SB] += sum_{p,q} gy[k, p, q] * xrow(c, p*sh + r*dh)[q + soff[s]]
template <typename T, int KB, int SB>
void weight_tile(const ConvShape& s, const RowPack& pk, const int64_t* soff, const T* xc, const T* gyg,
                 int64_t k0, int64_t r, int64_t s0, T* gw_kc) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  const int64_t Kg = s.Kg(), PQ = s.P * s.Q, row = pk.row();
  const int64_t RS = s.R * s.S, CgRS = s.Cg() * RS;
  const T* gyk[KB];
  for (int k = 0; k < KB; ++k) gyk[k] = gyg + imin(k0 + k, Kg - 1) * PQ;  // tail rows repeat, unused
  V acc[KB][SB];
  for (int k = 0; k < KB; ++k)
    for (int j = 0; j < SB; ++j) acc[k][j] = V{};
  // The row's last Q % W columns as one masked step (lanes past Q read 0 on both sides): a scalar
  // tail ran whole rows narrower than a vector (7x7 and, with AVX-512's 16 lanes, 14x14 layers) at
  // a fraction of the rate.
  const LaneMask<T> last(0, s.Q % W);
  for (int64_t p = 0; p < s.P; ++p) {
    const T* xr = xc + (p * s.stride_h + r * s.dil_h) * row;
    const T* xs[SB];
    for (int j = 0; j < SB; ++j) xs[j] = xr + soff[s0 + j];
    const int64_t prow = p * s.Q;
    int64_t q = 0;
    for (; q + W <= s.Q; q += W) {
      V xv[SB];
      for (int j = 0; j < SB; ++j) xv[j] = vload(xs[j] + q);
      for (int k = 0; k < KB; ++k) {
        const V gv = vload(gyk[k] + prow + q);
        for (int j = 0; j < SB; ++j) acc[k][j] += gv * xv[j];
      }
    }
    if (q < s.Q) {
      V xv[SB];
      for (int j = 0; j < SB; ++j) xv[j] = vload_masked(xs[j] + q, last);
      for (int k = 0; k < KB; ++k) {
        const V gv = vload_masked(gyk[k] + prow + q, last);
        for (int j = 0; j < SB; ++j) acc[k][j] += gv * xv[j];
      }
    }
  }
  const int kvalid = static_cast<int>(imin(KB, Kg - k0));
  for (int k = 0; k < kvalid; ++k)
    for (int j = 0; j < SB; ++j) gw_kc[k * CgRS + r * s.S + s0 + j] += vsum<T>(acc[k][j]);
}

template <typename T, int KB>
void weight_columns(const ConvShape& s, const RowPack& pk, const int64_t* soff, const T* xc, const T* gyg,
                    int64_t k0, T* gw_kc) {
  for (int64_t r = 0; r < s.R; ++r) {
    int64_t s0 = 0;
    for (; s0 + 3 <= s.S; s0 += 3) weight_tile<T, KB, 3>(s, pk, soff, xc, gyg, k0, r, s0, gw_kc);
    if (s.S - s0 == 2) weight_tile<T, KB, 2>(s, pk, soff, xc, gyg, k0, r, s0, gw_kc);
    if (s.S - s0 == 1) weight_tile<T, KB, 1>(s, pk, soff, xc, gyg, k0, r, s0, gw_kc);
  }
}

}  // namespace

template <typename T>
void conv_direct_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb) {
  if (conv_depthwise_applies(s)) return conv_depthwise_backward_weight(s, x, gy, gw, gb);
  const int64_t Kg = s.Kg(), Cg = s.Cg(), RS = s.R * s.S, PQ = s.P * s.Q;
  const int nthr = num_threads();
  if (gw) {
    const int64_t wn = s.K * Cg * RS;
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t i = 0; i < wn; ++i) gw[i] = T(0);
  }
  if (gb) channel_sums(gy, s.N, s.K, PQ, gb);
  if (!gw || s.N == 0 || PQ == 0 || s.K == 0 || Cg == 0) return;
  const RowPack pk = forward_pack(s, s.Q);
  Workspace soff_ws(checked_bytes(s.S, sizeof(int64_t)));
  int64_t* soff = soff_ws.as<int64_t>();
  column_offsets(s.S, s.dil_w, pk.phases, pk.Wl, soff);
  Workspace xpack(checked_bytes(s.C * pk.plane(), sizeof(T)));
  const int KB = Kg >= 4 ? 4 : 1;
  const int64_t nkb = ceil_div(Kg, KB);
  const int64_t tasks = s.G * nkb * Cg;
  for (int64_t n = 0; n < s.N; ++n) {
    pack_rows(pk, s.C, x + n * s.C * s.H * s.W, xpack.as<T>());
    const T* gyn = gy + n * s.K * PQ;
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t g = t / (nkb * Cg), kb = (t / Cg) % nkb, c = t % Cg;
      const T* xc = xpack.as<T>() + (g * Cg + c) * pk.plane();
      const T* gyg = gyn + g * Kg * PQ;
      T* gw_kc = gw + ((g * Kg + kb * KB) * Cg + c) * RS;
      if (KB == 4)
        weight_columns<T, 4>(s, pk, soff, xc, gyg, kb * KB, gw_kc);
      else
        weight_columns<T, 1>(s, pk, soff, xc, gyg, kb * KB, gw_kc);
    }
  }
}

#define PYCONV_INSTANTIATE(T)                                                                        \
  template void conv_direct_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, double*, \
                                        const T*, const ConvEpilogue<T>&);                           \
  template int64_t conv_direct_prepared_numel<T>(const ConvShape&);                                 \
  template void conv_direct_prepare_weight<T>(const ConvShape&, const T*, T*);                      \
  template bool conv_direct_prepared_fits<T>(const ConvShape&, const T*);                           \
  template void conv_direct_backward_input<T>(const ConvShape&, const T*, const T*, T*);            \
  template void conv_direct_backward_weight<T>(const ConvShape&, const T*, const T*, T*, T*);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
