// Depthwise convolution (one input and one output channel per group: C == K == groups), NCHW,
// float32 / float64, any kernel size, stride, padding and dilation; one channel plane per task.
//
//   forward      y[n,c,p,q]  = b[c] + sum_{r,s} w[c,r,s] * x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-input   gx[n,c,h,v] = sum_{r,s} w[c,r,s] * gy[n,c, (h + ph - r*dh)/sh, (v + pw - s*dw)/sw]
//                over the taps whose divisions are exact; for each output phase (h mod sh, v mod sw)
//                that is a stride-1 correlation of gy with that phase's taps, so no zero is inserted
//   grad-weight  gw[c,r,s]   = sum_{n,p,q} gy[n,c,p,q] * x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-bias    gb[c]       = sum_{n,p,q} gy[n,c,p,q]
//
// Every pass is a grid correlation. The source plane is copied once into a zero-padded buffer (for
// a strided forward, split into sh x sw phase planes); outputs are computed on the buffer's own row
// pitch, output f = i*pitch + j reading buf[f + off[t]] for tap t. Every tap is then one
// contiguous vector load per output vector, with no edge case; columns j >= the output width are
// computed and dropped at write-back. A plane is only 1 input channel, which is why the
// channel-blocked direct kernel (one broadcast input per output-channel block) does not fit here.
#include "cpu/conv_depthwise.h"

#include "common/runtime.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

#include <omp.h>

namespace pyconv {
namespace PYCONV_ISA {
namespace {

constexpr int kQV = 4;            // output vectors per step of the correlation
constexpr int kMaxChunkTaps = 9;  // taps unrolled per pass; more taps take several passes
constexpr int64_t kChunkElems = 2048;  // output grid elements per L1-sized block

// out[f] (+)= sum_{t < NT} wt[t] * buf[f + off[t]], f in [0, n) rounded up to whole steps.
template <typename T, int NT, bool ACC>
void correlate(const T* buf, const int64_t* off, const T* wt, int64_t n, T* out) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V wv[NT];
  const T* src[NT];
  for (int t = 0; t < NT; ++t) wv[t] = vbroadcast(wt[t]), src[t] = buf + off[t];
  for (int64_t f = 0; f < n; f += kQV * W) {
    V acc[kQV];
    for (int v = 0; v < kQV; ++v) acc[v] = ACC ? vload(out + f + v * W) : V{};
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < kQV; ++v) acc[v] += wv[t] * vload(src[t] + f + v * W);
    for (int v = 0; v < kQV; ++v) vstore(out + f + v * W, acc[v]);
  }
}

template <typename T, bool ACC>
void correlate_chunk(const T* buf, const int64_t* off, const T* wt, int nt, int64_t n, T* out) {
  switch (nt) {
#define PYCONV_TAPS_CASE(k) \
  case k:                   \
    return correlate<T, k, ACC>(buf, off, wt, n, out);
    PYCONV_TAPS_CASE(1)
    PYCONV_TAPS_CASE(2)
    PYCONV_TAPS_CASE(3)
    PYCONV_TAPS_CASE(4)
    PYCONV_TAPS_CASE(5)
    PYCONV_TAPS_CASE(6)
    PYCONV_TAPS_CASE(7)
    PYCONV_TAPS_CASE(8)
    PYCONV_TAPS_CASE(9)
#undef PYCONV_TAPS_CASE
  }
}

// out[f] = sum_t wt[t] * buf[f + off[t]] over any number of taps (none: zeros).
template <typename T>
void correlate_taps(const T* buf, const int64_t* off, const T* wt, int64_t nt, int64_t n, T* out) {
  if (nt == 0) {
    for (int64_t f = 0; f < ceil_div(n, kQV * Simd<T>::W) * kQV * Simd<T>::W; ++f) out[f] = T(0);
    return;
  }
  for (int64_t t0 = 0; t0 < nt; t0 += kMaxChunkTaps) {
    const int k = static_cast<int>(imin(kMaxChunkTaps, nt - t0));
    if (t0 == 0)
      correlate_chunk<T, false>(buf, off + t0, wt + t0, k, n, out);
    else
      correlate_chunk<T, true>(buf, off + t0, wt + t0, k, n, out);
  }
}

// sums[t] += sum_f g[f] * buf[f + off[t]] for t < NT, f in [0, n) (n whole vectors): NT
// accumulators, one g load and NT input loads per NT FMAs.
template <typename T, int NT>
void dot(const T* g, const T* buf, const int64_t* off, int64_t n, double* sums) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V acc[NT];
  const T* src[NT];
  for (int t = 0; t < NT; ++t) acc[t] = V{}, src[t] = buf + off[t];
  for (int64_t f = 0; f < n; f += W) {
    const V gv = vload(g + f);
    for (int t = 0; t < NT; ++t) acc[t] += gv * vload(src[t] + f);
  }
  for (int t = 0; t < NT; ++t) sums[t] += double(vsum<T>(acc[t]));
}

template <typename T>
void dot_taps(const T* g, const T* buf, const int64_t* off, int nt, int64_t n, double* sums) {
  switch (nt) {
#define PYCONV_TAPS_CASE(k) \
  case k:                   \
    return dot<T, k>(g, buf, off, n, sums);
    PYCONV_TAPS_CASE(1)
    PYCONV_TAPS_CASE(2)
    PYCONV_TAPS_CASE(3)
    PYCONV_TAPS_CASE(4)
    PYCONV_TAPS_CASE(5)
    PYCONV_TAPS_CASE(6)
    PYCONV_TAPS_CASE(7)
    PYCONV_TAPS_CASE(8)
    PYCONV_TAPS_CASE(9)
#undef PYCONV_TAPS_CASE
  }
}

// A source plane (Hs x Ws) copied into sh x sw phase planes of Hl x Wl each:
//   plane (a, b)[i][j] = src[a + sh*i - top][b + sw*j - left], 0 outside the source.
struct PhasePack {
  int64_t Hs, Ws, top, left, sh, sw, Hl, Wl;
  int64_t plane() const { return Hl * Wl; }
  int64_t elems() const { return sh * sw * Hl * Wl; }
  int64_t offset(int64_t row, int64_t col) const {  // element (row, col) of the padded source
    return ((row % sh) * sw + col % sw) * plane() + (row / sh) * Wl + col / sw;
  }
};

template <typename T>
void pack_phases(const PhasePack& g, const T* src, T* dst) {
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      T* out = dst + (a * g.sw + b) * g.plane();
      // Columns j with b + sw*j - left in [0, Ws): [j0, j1).
      const int64_t first = g.left - b;  // sw*j >= first
      const int64_t j0 = imin(g.Wl, imax(0, ceil_div(imax(0, first), g.sw)));
      const int64_t j1 = imax(j0, imin(g.Wl, ceil_div(g.Ws + g.left - b, g.sw)));
      for (int64_t i = 0; i < g.Hl; ++i, out += g.Wl) {
        const int64_t h = a + g.sh * i - g.top;
        if (h < 0 || h >= g.Hs) {
          for (int64_t j = 0; j < g.Wl; ++j) out[j] = T(0);
          continue;
        }
        const T* in = src + h * g.Ws + b - g.left;
        for (int64_t j = 0; j < j0; ++j) out[j] = T(0);
        if (g.sw == 1)
          std::memcpy(out + j0, in + j0, (j1 - j0) * sizeof(T));
        else
          for (int64_t j = j0; j < j1; ++j) out[j] = in[g.sw * j];
        for (int64_t j = j1; j < g.Wl; ++j) out[j] = T(0);
      }
    }
}

// Room past a buffer for the last step's over-read (one output row plus one step).
template <typename T>
int64_t spare(int64_t pitch) { return pitch + kQV * Simd<T>::W; }

template <typename T>
void zero(T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = T(0);
}

// The forward's phase planes: output (p, q) lives at p*Wl + q and tap (r, s) at offset(r*dh, s*dw).
PhasePack forward_pack(const ConvShape& s) {
  PhasePack g{};
  g.Hs = s.H, g.Ws = s.W, g.top = s.pad_h, g.left = s.pad_w, g.sh = s.stride_h, g.sw = s.stride_w;
  g.Hl = s.P + (s.R - 1) * s.dil_h / s.stride_h;
  g.Wl = s.Q + (s.S - 1) * s.dil_w / s.stride_w;
  return g;
}

void forward_taps(const ConvShape& s, const PhasePack& g, int64_t* off) {
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) off[r * s.S + c] = g.offset(r * s.dil_h, c * s.dil_w);
}

// Rows per L1-sized block of an output grid with this pitch.
int64_t block_rows(int64_t pitch) { return imax(1, kChunkElems / pitch); }

// dst[0:n] = src[0:n] + bias.
template <typename T>
PYCONV_INLINE void copy_biased(const T* src, T bias, int64_t n, T* dst) {
  constexpr int W = Simd<T>::W;
  const vec_t<T> bv = vbroadcast(bias);
  int64_t j = 0;
  for (; j + W <= n; j += W) vstore(dst + j, vload(src + j) + bv);
  for (; j < n; ++j) dst[j] = src[j] + bias;
}

}  // namespace

bool conv_depthwise_applies(const ConvShape& s) { return s.Cg() == 1 && s.Kg() == 1; }

template <typename T>
void conv_depthwise_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats) {
  if (stats) zero(stats, 2 * s.K);
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return;
  const PhasePack g = forward_pack(s);
  const int64_t RS = s.R * s.S, Wl = g.Wl, rows = block_rows(Wl);
  const int64_t buf_elems = g.elems() + spare<T>(Wl), tmp_elems = rows * Wl + spare<T>(Wl);
  Workspace off_ws(checked_bytes(RS, sizeof(int64_t)));
  int64_t* off = off_ws.as<int64_t>();
  forward_taps(s, g, off);
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * (buf_elems + tmp_elems), sizeof(T)));
  // Per plane (sum, sum of squares) partials, added in a fixed order below.
  Workspace part(checked_bytes(stats ? 2 * s.N * s.K : 1, sizeof(double)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t nc = 0; nc < s.N * s.K; ++nc) {
    const int64_t c = nc % s.K;
    T* buf = ws.as<T>() + omp_get_thread_num() * (buf_elems + tmp_elems);
    T* tmp = buf + buf_elems;
    pack_phases(g, x + nc * s.H * s.W, buf);
    zero(buf + g.elems(), spare<T>(Wl));
    const T bias = b ? b[c] : T(0);
    double acc[2] = {0, 0};
    for (int64_t p0 = 0; p0 < s.P; p0 += rows) {
      const int64_t pn = imin(rows, s.P - p0);
      correlate_taps(buf + p0 * Wl, off, w + c * RS, RS, (pn - 1) * Wl + s.Q, tmp);
      for (int64_t p = 0; p < pn; ++p) {
        T* yr = y + (nc * s.P + p0 + p) * s.Q;
        copy_biased(tmp + p * Wl, bias, s.Q, yr);
        if (stats) {
          double row[2];
          sum_pair(yr, yr, static_cast<const T*>(nullptr), 0.0, 0.0, s.Q, row);
          acc[0] += row[0], acc[1] += row[1];
        }
      }
    }
    if (stats) part.as<double>()[2 * nc] = acc[0], part.as<double>()[2 * nc + 1] = acc[1];
  }
  if (stats) {
    const double* pp = part.as<double>();
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t k = 0; k < s.K; ++k, pp += 2) stats[k] += pp[0], stats[s.K + k] += pp[1];
  }
}

template <typename T>
void conv_depthwise_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  if (s.N == 0 || s.C == 0 || s.H == 0 || s.W == 0) return;
  const int64_t sh = s.stride_h, sw = s.stride_w, RS = s.R * s.S;
  // Tap (r, c) reaches output phase a = (r*dh - ph) mod sh at gy row i + dy, dy = (a + ph - r*dh)/sh.
  auto phase_of = [](int64_t v, int64_t m) { return ((v % m) + m) % m; };
  auto shift = [](int64_t a, int64_t pad, int64_t k, int64_t stride) { return (a + pad - k) / stride; };
  int64_t dy_min = 0, dy_max = 0, dx_min = 0, dx_max = 0;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t dy = shift(phase_of(r * s.dil_h - s.pad_h, sh), s.pad_h, r * s.dil_h, sh);
    dy_min = imin(dy_min, dy), dy_max = imax(dy_max, dy);
  }
  for (int64_t c = 0; c < s.S; ++c) {
    const int64_t dx = shift(phase_of(c * s.dil_w - s.pad_w, sw), s.pad_w, c * s.dil_w, sw);
    dx_min = imin(dx_min, dx), dx_max = imax(dx_max, dx);
  }
  // gy padded so that rows i + dy and columns j + dx stay inside for every phase's outputs.
  PhasePack g{};
  g.Hs = s.P, g.Ws = s.Q, g.top = -dy_min, g.left = -dx_min, g.sh = 1, g.sw = 1;
  g.Hl = g.top + imax(s.P, ceil_div(s.H, sh) + dy_max);
  g.Wl = g.left + imax(s.Q, ceil_div(s.W, sw) + dx_max);
  const int64_t Wl = g.Wl, rows = block_rows(Wl);
  const int64_t buf_elems = g.elems() + spare<T>(Wl), tmp_elems = rows * Wl + spare<T>(Wl);
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * (buf_elems + tmp_elems + RS), sizeof(T)));
  Workspace off_ws(checked_bytes(nthr * RS, sizeof(int64_t)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
    const int64_t c = nc % s.C;
    const int tid = omp_get_thread_num();
    T* buf = ws.as<T>() + tid * (buf_elems + tmp_elems + RS);
    T* tmp = buf + buf_elems;
    T* wt = tmp + tmp_elems;
    int64_t* off = off_ws.as<int64_t>() + tid * RS;
    pack_phases(g, gy + nc * s.P * s.Q, buf);
    zero(buf + g.elems(), spare<T>(Wl));
    T* gxc = gx + nc * s.H * s.W;
    for (int64_t a = 0; a < sh && a < s.H; ++a)
      for (int64_t bb = 0; bb < sw && bb < s.W; ++bb) {
        int64_t nt = 0;
        for (int64_t r = 0; r < s.R; ++r) {
          if (phase_of(r * s.dil_h - s.pad_h, sh) != a) continue;
          for (int64_t q = 0; q < s.S; ++q) {
            if (phase_of(q * s.dil_w - s.pad_w, sw) != bb) continue;
            const int64_t dy = shift(a, s.pad_h, r * s.dil_h, sh), dx = shift(bb, s.pad_w, q * s.dil_w, sw);
            off[nt] = (dy + g.top) * Wl + dx + g.left;
            wt[nt++] = w[c * RS + r * s.S + q];
          }
        }
        const int64_t Ha = ceil_div(s.H - a, sh), Wb = ceil_div(s.W - bb, sw);
        for (int64_t i0 = 0; i0 < Ha; i0 += rows) {
          const int64_t in = imin(rows, Ha - i0);
          correlate_taps(buf + i0 * Wl, off, wt, nt, (in - 1) * Wl + Wb, tmp);
          for (int64_t i = 0; i < in; ++i) {
            T* out = gxc + (a + sh * (i0 + i)) * s.W + bb;
            const T* t = tmp + i * Wl;
            if (sw == 1)
              std::memcpy(out, t, Wb * sizeof(T));
            else
              for (int64_t j = 0; j < Wb; ++j) out[sw * j] = t[j];
          }
        }
      }
  }
}

template <typename T>
void conv_depthwise_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb) {
  const int64_t RS = s.R * s.S, PQ = s.P * s.Q;
  if (gb) channel_sums(gy, s.N, s.K, PQ, gb);
  if (!gw) return;
  if (s.N == 0 || PQ == 0) return zero(gw, s.K * RS);
  constexpr int W = Simd<T>::W;
  const PhasePack g = forward_pack(s);
  const int64_t Wl = g.Wl;
  // gy on the forward's output grid (p*Wl + q, zero where q >= Q), rounded up to whole vectors.
  const int64_t grid = ceil_div(s.P * Wl, W) * W;
  const int64_t buf_elems = g.elems() + spare<T>(Wl);
  Workspace off_ws(checked_bytes(RS, sizeof(int64_t)));
  int64_t* off = off_ws.as<int64_t>();
  forward_taps(s, g, off);
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * (buf_elems + grid), sizeof(T)));
  Workspace sums_ws(checked_bytes(nthr * RS, sizeof(double)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t c = 0; c < s.K; ++c) {
    const int tid = omp_get_thread_num();
    T* buf = ws.as<T>() + tid * (buf_elems + grid);
    T* gg = buf + buf_elems;
    double* sums = sums_ws.as<double>() + tid * RS;
    zero(buf + g.elems(), spare<T>(Wl));
    zero(gg, grid);
    zero(sums, RS);
    // Each image's plane in float, the images added in double in a fixed order.
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t nc = n * s.C + c;
      pack_phases(g, x + nc * s.H * s.W, buf);
      for (int64_t p = 0; p < s.P; ++p) std::memcpy(gg + p * Wl, gy + nc * PQ + p * s.Q, s.Q * sizeof(T));
      for (int64_t t0 = 0; t0 < RS; t0 += kMaxChunkTaps) {
        const int k = static_cast<int>(imin(kMaxChunkTaps, RS - t0));
        dot_taps(gg, buf, off + t0, k, grid, sums + t0);
      }
    }
    for (int64_t t = 0; t < RS; ++t) gw[c * RS + t] = T(sums[t]);
  }
}

#define PYCONV_INSTANTIATE(T)                                                                             \
  template void conv_depthwise_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, double*); \
  template void conv_depthwise_backward_input<T>(const ConvShape&, const T*, const T*, T*);            \
  template void conv_depthwise_backward_weight<T>(const ConvShape&, const T*, const T*, T*, T*);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
