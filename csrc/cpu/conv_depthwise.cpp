// Depthwise convolution (one input and one output channel per group: C == K == groups), NCHW,
// float32 / float64, any kernel size, stride, padding and dilation.
//
//   forward      y[n,c,p,q]  = b[c] + sum_{r,s} w[c,r,s] * x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-input   gx[n,c,h,v] = sum_{r,s} w[c,r,s] * gy[n,c, (h + ph - r*dh)/sh, (v + pw - s*dw)/sw]
//                over the taps whose divisions are exact; for each output phase (h mod sh, v mod sw)
//                that is a stride-1 correlation of gy with that phase's taps, so no zero is inserted
//   grad-weight  gw[c,r,s]   = sum_{n,p,q} gy[n,c,p,q] * x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//   grad-bias    gb[c]       = sum_{n,p,q} gy[n,c,p,q]
//
// Channels in the lanes: a task takes the W channels [c0, c0 + W) of one image (8 floats or 4
// doubles on AVX2) and moves them, with W x W register transposes, into a zero-padded buffer of
// pixels, each pixel one vector of W channels. Every output pixel is then one full vector whatever
// the plane's width (a 7x7 plane fills 49 vectors, where vectorizing along a row would fill 7 of
// 8 lanes), a stride is only an index step, and each tap is one vector FMA with that tap's W
// weights. Vectorizing along the plane's rows instead (one plane per task, strided planes split
// into phase planes) measured slower on every MobileNetV2 depthwise layer, batch 1 and 8.
// The exception is the stride-1 forward on planes up to 16 wide (flat_forward): there each plane is
// one flat run of outputs, vectors wrapping from row to row, the padding a lane mask per tap, and
// no reorder into lanes and back.
#include "cpu/conv_depthwise.h"

#include "common/runtime.h"
#include "cpu/epilogue.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

#include <omp.h>

#include <type_traits>

namespace pyconv {
namespace PYCONV_ISA {
namespace {

constexpr int kMaxChunkTaps = 9;  // taps unrolled per pass; more taps take several passes
// Widest plane the flat forward takes (see flat_forward): 1.05-1.15x the lanes on MobileNetV2's
// 7x7 and 14x14 layers (batch 1 and 8, min of 9 alternating runs), 0.9x at 28 wide.
constexpr int64_t kFlatMaxWidth = 16;
// and output pixels per plane (its mask table holds RS masks per output vector: a tall, narrow
// plane would make it large)
constexpr int64_t kFlatMaxPixels = 4096;

// f(std::integral_constant<int, K>{}) for a run-time count k in [1, kMaxChunkTaps]: the kernels
// below unroll their tap and pixel loops over compile-time counts.
template <typename F>
PYCONV_INLINE void with_count(int k, F&& f) {
  switch (k) {
#define PYCONV_COUNT_CASE(K) \
  case K:                    \
    return f(std::integral_constant<int, K>{});
    PYCONV_COUNT_CASE(1)
    PYCONV_COUNT_CASE(2)
    PYCONV_COUNT_CASE(3)
    PYCONV_COUNT_CASE(4)
    PYCONV_COUNT_CASE(5)
    PYCONV_COUNT_CASE(6)
    PYCONV_COUNT_CASE(7)
    PYCONV_COUNT_CASE(8)
    PYCONV_COUNT_CASE(9)
#undef PYCONV_COUNT_CASE
  }
}

// f(t0, K) for the taps [t0, t0 + K) of nt, in chunks of at most kMaxChunkTaps.
template <typename F>
void for_tap_chunks(int64_t nt, F&& f) {
  for (int64_t t0 = 0; t0 < nt; t0 += kMaxChunkTaps)
    with_count(static_cast<int>(imin(kMaxChunkTaps, nt - t0)), [&](auto K) { f(t0, K); });
}

template <typename T>
void zero(T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = T(0);
}


// Grad-input by output phase: tap (r, c) reaches the outputs h = a (mod sh), v = b (mod sw) with
// a = (r*dh - ph) mod sh, b likewise, reading gy at row i + dy, column j + dx for output
// (a + sh*i, b + sw*j), dy = (a + ph - r*dh) / sh exactly. gy is padded by (top, left) so that
// every read stays inside a Hg x Wg buffer.
struct PhaseTaps {
  int64_t top, left, Hg, Wg;
  static int64_t phase(int64_t v, int64_t m) { return ((v % m) + m) % m; }
  bool reaches(const ConvShape& s, int64_t a, int64_t b, int64_t r, int64_t c, int64_t& dy, int64_t& dx) const {
    if (phase(r * s.dil_h - s.pad_h, s.stride_h) != a || phase(c * s.dil_w - s.pad_w, s.stride_w) != b) return false;
    dy = (a + s.pad_h - r * s.dil_h) / s.stride_h;
    dx = (b + s.pad_w - c * s.dil_w) / s.stride_w;
    return true;
  }
};

PhaseTaps phase_taps(const ConvShape& s) {
  const int64_t sh = s.stride_h, sw = s.stride_w;
  int64_t dy_min = 0, dy_max = 0, dx_min = 0, dx_max = 0;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t a = PhaseTaps::phase(r * s.dil_h - s.pad_h, sh);
    const int64_t dy = (a + s.pad_h - r * s.dil_h) / sh;
    dy_min = imin(dy_min, dy), dy_max = imax(dy_max, dy);
  }
  for (int64_t c = 0; c < s.S; ++c) {
    const int64_t b = PhaseTaps::phase(c * s.dil_w - s.pad_w, sw);
    const int64_t dx = (b + s.pad_w - c * s.dil_w) / sw;
    dx_min = imin(dx_min, dx), dx_max = imax(dx_max, dx);
  }
  PhaseTaps t{};
  t.top = -dy_min, t.left = -dx_min;
  t.Hg = t.top + imax(s.P, ceil_div(s.H, sh) + dy_max);
  t.Wg = t.left + imax(s.Q, ceil_div(s.W, sw) + dx_max);
  return t;
}

// Copies an h x w block of nl channel planes (channel l at src + l*plane, row pitch ld) into
// blocked pixels dst[(i*dpitch + j)*W + lane]; lanes >= nl are zero. Rows stored back to back
// (ld == w) go as one flat run, so a plane narrower than a vector still moves W pixels at a time.
template <typename T>
void to_lanes(const T* src, int64_t plane, int64_t ld, int nl, int64_t h, int64_t w, T* dst, int64_t dpitch) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  if (ld != w && h > 1) {
    for (int64_t i = 0; i < h; ++i) to_lanes(src + i * ld, plane, w, nl, 1, w, dst + i * dpitch * W, dpitch);
    return;
  }
  const int64_t n = h * w;
  int64_t i = 0, j = 0;  // pixel f = i*w + j
  auto next = [&] {
    if (++j == w) j = 0, ++i;
  };
  int64_t f = 0;
  for (; f + W <= n; f += W) {
    V r[W];
    for (int l = 0; l < W; ++l) r[l] = l < nl ? vload(src + l * plane + f) : V{};
    vtranspose(r);
    for (int k = 0; k < W; ++k, next()) vstore(dst + (i * dpitch + j) * W, r[k]);
  }
  for (; f < n; ++f, next())
    for (int l = 0; l < W; ++l) dst[(i * dpitch + j) * W + l] = l < nl ? src[l * plane + f] : T(0);
}

// The inverse for an h x w block of blocked pixels (pitch w): dst + lane*plane + i*w + j gets
// src[(i*w + j)*W + lane] + bias[lane], for lanes < nl.
template <typename T>
void from_lanes(const T* src, int64_t h, int64_t w, int nl, const T* bias, T* dst, int64_t plane) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  const int64_t n = h * w;  // the rows are contiguous on both sides
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    V r[W];
    for (int k = 0; k < W; ++k) r[k] = vload(src + (j + k) * W);
    vtranspose(r);
    for (int l = 0; l < nl; ++l) vstore(dst + l * plane + j, r[l] + vbroadcast(bias ? bias[l] : T(0)));
  }
  for (; j < n; ++j)
    for (int l = 0; l < nl; ++l) dst[l * plane + j] = src[j * W + l] + (bias ? bias[l] : T(0));
}

// A blocked padded image: pixels (i, j), i < Hp, j < Wp, holding source (i - top, j - left).
struct LanePad {
  int64_t Hs, Ws, top, left, Hp, Wp;
  int64_t elems(int W) const { return Hp * Wp * W; }
};

template <typename T>
void pack_lanes(const LanePad& g, const T* src, int nl, T* dst) {
  constexpr int W = Simd<T>::W;
  // The source rows and columns that land inside the buffer; zeros around them.
  const int64_t i0 = imax(0, -g.top), i1 = imax(i0, imin(g.Hs, g.Hp - g.top));
  const int64_t j0 = imax(0, -g.left), j1 = imax(j0, imin(g.Ws, g.Wp - g.left));
  const int64_t top = i0 + g.top, bottom = i1 + g.top, left = j0 + g.left, right = j1 + g.left;
  if (i1 == i0 || j1 == j0) return zero(dst, g.elems(W));
  zero(dst, top * g.Wp * W);
  zero(dst + bottom * g.Wp * W, (g.Hp - bottom) * g.Wp * W);
  for (int64_t i = top; i < bottom; ++i) {
    zero(dst + i * g.Wp * W, left * W);
    zero(dst + (i * g.Wp + right) * W, (g.Wp - right) * W);
  }
  to_lanes(src + i0 * g.Ws + j0, g.Hs * g.Ws, g.Ws, nl, i1 - i0, j1 - j0, dst + (top * g.Wp + left) * W, g.Wp);
}

// U output pixels from pixel j: U independent accumulators, so the NT-long FMA chains of
// neighbouring pixels overlap.
template <typename T, int NT, bool ACC, int U>
PYCONV_INLINE void lane_pixels(const T* src, int64_t col_step, const int64_t* off, const vec_t<T>* wt, int64_t j,
                               T* out, int64_t out_step) {
  using V = vec_t<T>;
  V acc[U];
  for (int u = 0; u < U; ++u) acc[u] = ACC ? vload(out + (j + u) * out_step) : V{};
  for (int t = 0; t < NT; ++t)
    for (int u = 0; u < U; ++u) acc[u] += wt[t] * vload(src + (j + u) * col_step + off[t]);
  for (int u = 0; u < U; ++u) vstore(out + (j + u) * out_step, acc[u]);
}

// out[j*out_step] (+)= sum_{t < NT} wv[t] * src[j*col_step + off[t]] for j < n; each term a
// vector of W channels. Eight pixels a step, the rest (a 7-wide row: all of it) in one step.
template <typename T, int NT, bool ACC>
void lane_taps(const T* src, int64_t col_step, const int64_t* off, const T* wv, int64_t n, T* out,
               int64_t out_step) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V wt[NT];
  for (int t = 0; t < NT; ++t) wt[t] = vload(wv + t * W);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) lane_pixels<T, NT, ACC, 8>(src, col_step, off, wt, j, out, out_step);
  if (j < n)
    with_count(static_cast<int>(n - j), [&](auto U) {
      lane_pixels<T, NT, ACC, decltype(U)::value>(src, col_step, off, wt, j, out, out_step);
    });
}

template <typename T>
void lane_taps_any(const T* src, int64_t col_step, const int64_t* off, const T* wv, int64_t nt, int64_t n,
                   T* out, int64_t out_step) {
  constexpr int W = Simd<T>::W;
  if (nt == 0) {
    for (int64_t j = 0; j < n; ++j) zero(out + j * out_step, W);
    return;
  }
  for_tap_chunks(nt, [&](int64_t t0, auto K) {
    constexpr int k = decltype(K)::value;
    if (t0 == 0)
      lane_taps<T, k, false>(src, col_step, off + t0, wv + t0 * W, n, out, out_step);
    else
      lane_taps<T, k, true>(src, col_step, off + t0, wv + t0 * W, n, out, out_step);
  });
}

// sums[t*W + lane] += sum_{p,q} g[p*Q + q] * src[p*row_step + q*col_step + off[t]] for t < NT.
template <typename T, int NT>
void lane_dots(const T* g, int64_t P, int64_t Q, const T* src, int64_t row_step, int64_t col_step,
               const int64_t* off, double* sums) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = V{};
  for (int64_t p = 0; p < P; ++p) {
    const T* sp = src + p * row_step;
    const T* gp = g + p * Q * W;
    for (int64_t q = 0; q < Q; ++q) {
      const V gv = vload(gp + q * W);
      const T* sq = sp + q * col_step;
      for (int t = 0; t < NT; ++t) acc[t] += gv * vload(sq + off[t]);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int l = 0; l < W; ++l) sums[t * W + l] += double(acc[t][l]);
}

template <typename T>
void lane_dots_any(const T* g, int64_t P, int64_t Q, const T* src, int64_t row_step, int64_t col_step,
                   const int64_t* off, int64_t nt, double* sums) {
  constexpr int W = Simd<T>::W;
  for_tap_chunks(nt, [&](int64_t t0, auto K) {
    lane_dots<T, decltype(K)::value>(g, P, Q, src, row_step, col_step, off + t0, sums + t0 * W);
  });
}

// Filters as [channel block][tap][lane], zero beyond C; tap t is filter tap order[t] (or t).
template <typename T>
void pack_lane_filters(const T* w, int64_t C, int64_t RS, const int64_t* order, T* dst) {
  constexpr int W = Simd<T>::W;
  const int64_t nb = ceil_div(C, W);
  for (int64_t cb = 0; cb < nb; ++cb)
    for (int64_t t = 0; t < RS; ++t)
      for (int l = 0; l < W; ++l) {
        const int64_t c = cb * W + l;
        dst[(cb * RS + t) * W + l] = c < C ? w[c * RS + (order ? order[t] : t)] : T(0);
      }
}

// The forward's blocked input: output (p, q) reads pixel (p*sh + r*dh, q*sw + s*dw), tap (r, s)
// at offset forward_lane_taps(...)[r*S + s] from the output's first pixel.
LanePad forward_lanes(const ConvShape& s) {
  return LanePad{s.H, s.W, s.pad_h, s.pad_w, (s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1,
                 (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1};
}

template <typename T>
void forward_lane_taps(const ConvShape& s, const LanePad& g, int64_t* off) {
  constexpr int W = Simd<T>::W;
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) off[r * s.S + c] = (r * s.dil_h * g.Wp + c * s.dil_w) * W;
}

template <typename T>
void lanes_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                   const ConvEpilogue<T>& ep) {
  constexpr int W = Simd<T>::W;
  const int64_t RS = s.R * s.S, nb = ceil_div(s.C, W), HW = s.H * s.W, PQ = s.P * s.Q;
  const LanePad g = forward_lanes(s);
  Workspace wp(checked_bytes(nb * RS * W, sizeof(T)));
  pack_lane_filters(w, s.C, RS, static_cast<const int64_t*>(nullptr), wp.as<T>());
  Workspace off_ws(checked_bytes(RS, sizeof(int64_t)));
  int64_t* off = off_ws.as<int64_t>();
  forward_lane_taps<T>(s, g, off);
  const int64_t per_thread = g.elems(W) + PQ * W;
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * per_thread, sizeof(T)));
  Workspace part(checked_bytes(stats ? 2 * s.N * s.K : 1, sizeof(double)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t nb_i = 0; nb_i < s.N * nb; ++nb_i) {
    const int64_t n = nb_i / nb, c0 = nb_i % nb * W;
    const int nl = static_cast<int>(imin(W, s.C - c0));
    T* xb = ws.as<T>() + omp_get_thread_num() * per_thread;
    T* ob = xb + g.elems(W);
    pack_lanes(g, x + (n * s.C + c0) * HW, nl, xb);
    const T* wv = wp.as<T>() + (c0 / W) * RS * W;
    for (int64_t p = 0; p < s.P; ++p)
      lane_taps_any(xb + p * s.stride_h * g.Wp * W, s.stride_w * W, off, wv, RS, s.Q, ob + p * s.Q * W, W);
    T* yb = y + (n * s.K + c0) * PQ;
    from_lanes(ob, s.P, s.Q, nl, b ? b + c0 : nullptr, yb, PQ);
    if (stats)
      for (int l = 0; l < nl; ++l)
        sum_pair(yb + l * PQ, yb + l * PQ, static_cast<const T*>(nullptr), 0.0, 0.0, PQ,
                 part.as<double>() + 2 * (n * s.K + c0 + l));
    for (int l = 0; l < nl; ++l) epilogue_apply(ep, yb + l * PQ, PQ);
  }
  if (stats) add_channel_partials(part.as<double>(), s.N, s.K, 1, stats);  // one partial a plane
}

// Stride 1 on planes as wide as the output (same padding across): a plane is one flat run, and
// output pixel f = p*Q + q reads x at f + off[t] for tap t (row and column offsets folded into
// one), so W consecutive outputs are one vector even where they wrap to the next row. The
// padding becomes a lane mask per (output vector, tap), read from a table shared by all planes;
// masked loads never touch memory outside the plane's valid pixels. No reorder into lanes and
// back, a large share of the work on 7x7 and 14x14 planes (MobileNetV2's 960-channel 7x7 layer at
// batch 8: 0.177 -> 0.168 ms, the 576-channel 14x14 one 0.316 -> 0.279).
bool flat_applies(const ConvShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.Q == s.W && s.W <= kFlatMaxWidth && s.P * s.Q <= kFlatMaxPixels &&
         s.R * s.S <= kMaxChunkTaps;
}

// One plane: yp[f] = bias + sum_t w[t] * xp[f + off[t]] where mask says the tap is inside.
template <typename T, int NT>
PYCONV_INLINE void flat_plane(const T* xp, const T* wc, T bias, const int64_t* off, const mask_word_t<T>* mask,
                              int64_t PQ, T* yp) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::W;
  V wv[NT];
  int64_t o[NT];
  for (int t = 0; t < NT; ++t) wv[t] = vbroadcast(wc[t]), o[t] = off[t];
  const V bv = vbroadcast(bias);
  int64_t f = 0;
  for (; f + W <= PQ; f += W, mask += NT * W) {
    V acc = bv;
    for (int t = 0; t < NT; ++t) acc += wv[t] * vload_where(xp + f + o[t], mask + t * W);
    vstore(yp + f, acc);
  }
  if (f < PQ) {
    V acc = bv;
    for (int t = 0; t < NT; ++t) acc += wv[t] * vload_where(xp + f + o[t], mask + t * W);
    alignas(64) T tail[W];
    vstore(tail, acc);
    for (int64_t l = 0; l < PQ - f; ++l) yp[f + l] = tail[l];
  }
}

template <typename T>
void flat_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                  const ConvEpilogue<T>& ep) {
  using M = mask_word_t<T>;
  constexpr int W = Simd<T>::W;
  const int64_t RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W, nv = ceil_div(PQ, W);
  Workspace off_ws(checked_bytes(RS, sizeof(int64_t)));
  int64_t* off = off_ws.as<int64_t>();
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) off[r * s.S + c] = (r * s.dil_h - s.pad_h) * s.W + c * s.dil_w - s.pad_w;
  // mask[(v*RS + t)*W + l]: output v*W + l exists and its tap t lies inside the plane
  Workspace mask_ws(checked_bytes(nv * RS * W, sizeof(M)));
  M* mask = mask_ws.as<M>();
  for (int64_t v = 0; v < nv; ++v)
    for (int64_t t = 0; t < RS; ++t)
      for (int l = 0; l < W; ++l) {
        const int64_t f = v * W + l, p = f / s.Q, q = f % s.Q;
        const int64_t i = p + t / s.S * s.dil_h - s.pad_h, j = q + t % s.S * s.dil_w - s.pad_w;
        mask[(v * RS + t) * W + l] = (f < PQ && i >= 0 && i < s.H && j >= 0 && j < s.W) ? M(-1) : M(0);
      }
  Workspace part(checked_bytes(stats ? 2 * s.N * s.K : 1, sizeof(double)));
  with_count(static_cast<int>(RS), [&](auto K) {
    constexpr int NT = decltype(K)::value;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const int64_t c = nc % s.C;
      T* yp = y + nc * PQ;
      flat_plane<T, NT>(x + nc * HW, w + c * RS, b ? b[c] : T(0), off, mask, PQ, yp);
      if (stats) sum_pair(yp, yp, static_cast<const T*>(nullptr), 0.0, 0.0, PQ, part.as<double>() + 2 * nc);
      epilogue_apply(ep, yp, PQ);
    }
  });
  if (stats) add_channel_partials(part.as<double>(), s.N, s.K, 1, stats);  // one partial a plane
}

template <typename T>
void lanes_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  constexpr int W = Simd<T>::W;
  const int64_t sh = s.stride_h, sw = s.stride_w, RS = s.R * s.S, nb = ceil_div(s.C, W);
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  const PhaseTaps pt = phase_taps(s);
  LanePad g{s.P, s.Q, pt.top, pt.left, pt.Hg, pt.Wg};
  // The taps grouped by the output phase they reach (phase a*sw + b owns taps [first[ph], first[ph+1])),
  // with their gy offsets; the filters are packed in that order.
  Workspace taps_ws(checked_bytes(2 * RS + sh * sw + 1, sizeof(int64_t)));
  int64_t* off = taps_ws.as<int64_t>();
  int64_t* order = off + RS;
  int64_t* first = order + RS;
  int64_t nt = 0;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t bb = 0; bb < sw; ++bb) {
      first[a * sw + bb] = nt;
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t q = 0; q < s.S; ++q) {
          int64_t dy, dx;
          if (!pt.reaches(s, a, bb, r, q, dy, dx)) continue;
          off[nt] = ((dy + pt.top) * pt.Wg + dx + pt.left) * W;
          order[nt++] = r * s.S + q;
        }
    }
  first[sh * sw] = nt;
  Workspace wp(checked_bytes(nb * RS * W, sizeof(T)));
  pack_lane_filters(w, s.C, RS, order, wp.as<T>());
  const int64_t per_thread = g.elems(W) + HW * W;
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * per_thread, sizeof(T)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t nb_i = 0; nb_i < s.N * nb; ++nb_i) {
    const int64_t n = nb_i / nb, c0 = nb_i % nb * W;
    const int nl = static_cast<int>(imin(W, s.C - c0));
    T* gb = ws.as<T>() + omp_get_thread_num() * per_thread;
    T* ob = gb + g.elems(W);
    pack_lanes(g, gy + (n * s.K + c0) * PQ, nl, gb);
    const T* wv = wp.as<T>() + (c0 / W) * RS * W;
    for (int64_t a = 0; a < sh && a < s.H; ++a)
      for (int64_t bb = 0; bb < sw && bb < s.W; ++bb) {
        const int64_t t0 = first[a * sw + bb], k = first[a * sw + bb + 1] - t0;
        const int64_t Ha = ceil_div(s.H - a, sh), Wb = ceil_div(s.W - bb, sw);
        for (int64_t i = 0; i < Ha; ++i)
          lane_taps_any(gb + i * pt.Wg * W, W, off + t0, wv + t0 * W, k, Wb, ob + ((a + sh * i) * s.W + bb) * W,
                        sw * W);
      }
    from_lanes(ob, s.H, s.W, nl, static_cast<const T*>(nullptr), gx + (n * s.C + c0) * HW, HW);
  }
}

template <typename T>
void lanes_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw) {
  constexpr int W = Simd<T>::W;
  const int64_t RS = s.R * s.S, nb = ceil_div(s.C, W), HW = s.H * s.W, PQ = s.P * s.Q;
  const LanePad g = forward_lanes(s);
  Workspace off_ws(checked_bytes(RS, sizeof(int64_t)));
  int64_t* off = off_ws.as<int64_t>();
  forward_lane_taps<T>(s, g, off);
  const int64_t per_thread = g.elems(W) + PQ * W;
  const int nthr = num_threads();
  Workspace ws(checked_bytes(nthr * per_thread, sizeof(T)));
  Workspace sums_ws(checked_bytes(nthr * RS * W, sizeof(double)));
#pragma omp parallel for num_threads(nthr) schedule(static)
  for (int64_t cb = 0; cb < nb; ++cb) {
    const int64_t c0 = cb * W;
    const int nl = static_cast<int>(imin(W, s.C - c0));
    const int tid = omp_get_thread_num();
    T* xb = ws.as<T>() + tid * per_thread;
    T* gb = xb + g.elems(W);
    double* sums = sums_ws.as<double>() + tid * RS * W;
    zero(sums, RS * W);
    // Each image's sums in float vectors, the images added in double in a fixed order.
    for (int64_t n = 0; n < s.N; ++n) {
      pack_lanes(g, x + (n * s.C + c0) * HW, nl, xb);
      to_lanes(gy + (n * s.K + c0) * PQ, PQ, s.Q, nl, s.P, s.Q, gb, s.Q);
      lane_dots_any(gb, s.P, s.Q, xb, s.stride_h * g.Wp * W, s.stride_w * W, off, RS, sums);
    }
    for (int l = 0; l < nl; ++l)
      for (int64_t t = 0; t < RS; ++t) gw[(c0 + l) * RS + t] = T(sums[t * W + l]);
  }
}

}  // namespace

bool conv_depthwise_applies(const ConvShape& s) { return s.Cg() == 1 && s.Kg() == 1; }

template <typename T>
void conv_depthwise_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                            const ConvEpilogue<T>& ep) {
  if (stats) zero(stats, 2 * s.K);
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return;
  if (flat_applies(s)) return flat_forward(s, x, w, b, y, stats, ep);
  lanes_forward(s, x, w, b, y, stats, ep);
}

template <typename T>
void conv_depthwise_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  if (s.N == 0 || s.C == 0 || s.H == 0 || s.W == 0) return;
  lanes_backward_input(s, gy, w, gx);
}

template <typename T>
void conv_depthwise_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb) {
  const int64_t RS = s.R * s.S, PQ = s.P * s.Q;
  if (gb) channel_sums(gy, s.N, s.K, PQ, gb);
  if (!gw) return;
  if (s.N == 0 || PQ == 0) return zero(gw, s.K * RS);
  lanes_backward_weight(s, x, gy, gw);
}

#define PYCONV_INSTANTIATE(T)                                                                             \
  template void conv_depthwise_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, double*,     \
                                           const ConvEpilogue<T>&);\
  template void conv_depthwise_backward_input<T>(const ConvShape&, const T*, const T*, T*);            \
  template void conv_depthwise_backward_weight<T>(const ConvShape&, const T*, const T*, T*, T*);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
