// Max and average pooling over NCHW planes, float32 / float64.
//
//   max_pool2d    y[p,q]   = max over in-range taps (r,s) of x[p*sh - ph + r*dh, q*sw - pw + s*dw]
//                 idx[p,q] = ih*W + iw of the winner. Taps are scanned r-major, s-minor and a tap
//                 replaces the running (max, idx) when it is greater than the max or NaN, starting
//                 from (-inf, first in-range tap): torch's rule (first max wins ties, last NaN wins).
//   max backward  gx[i] = sum of gy[p,q] over the (p,q) with idx[p,q] == i
//   avg_pool2d    y[p,q]   = sum over in-range taps of x[p*sh - ph + r, q*sw - pw + s] / div(p,q)
//                 div = divisor_override if given, else with count_include_pad the window clipped to
//                 the padded input: (min(hs+kh, H+ph) - hs) * (min(ws+kw, W+pw) - ws), hs = p*sh-ph,
//                 ws = q*sw-pw; else the number of in-range taps
//   avg backward  gx[h,w] = sum over the windows (p,q) holding (h,w) of gy[p,q] / div(p,q)
//
// Layout trick: rows are copied into a per-thread buffer, padded with -inf (max) or 0 (avg) and
// split into sw phases: padded column j is stored at [j % sw][j / sw]. Tap s of output column q is
// then at [(s*dw) % sw][(s*dw) / sw + q], so every inner loop loads whole vectors of consecutive
// output columns, whatever the stride or padding, with no bounds tests.
//   - values only (avg, max without indices): max and sum are associative, so each window reduces
//     its rows first (contiguous vectors read straight from x) into one row, which alone is split;
//   - max with indices: every input row is split once (the plane's rows stay in L2) and the taps
//     are scanned in torch's order, carrying the index lanes along;
//   - avg backward: the same layout in reverse, scatter-add of the scaled gradient rows into a
//     phase-split accumulator, then copied back un-split into gx.
// Work is split into (plane, block of rows) tasks, so small batches still use every thread.
// Global average pooling (the window is the whole unpadded plane: AdaptiveAvgPool2d(1)) is one sum
// per contiguous plane, in float64, and its backward a broadcast: no row buffers.
#include "cpu/pool.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <utility>

#include "common/runtime.h"
#include "cpu/simd.h"
#include "cpu/sums.h"

namespace pyconv {
namespace PYCONV_ISA {
namespace {

// Integer lanes matching vec_t<T> (index arithmetic in registers) and their int64 widening.
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef int32_t I;
  typedef int32_t IV __attribute__((vector_size(kVectorBytes)));
  typedef int64_t I64V __attribute__((vector_size(2 * kVectorBytes)));
};
template <>
struct Lanes<double> {
  typedef int64_t I;
  typedef int64_t IV __attribute__((vector_size(kVectorBytes)));
  typedef int64_t I64V __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
PYCONV_INLINE typename Lanes<T>::IV iota_lanes() {
  typename Lanes<T>::IV v;
  for (int i = 0; i < Simd<T>::W; ++i) v[i] = i;
  return v;
}

// Per-call geometry of the phase-split rows.
struct Geometry {
  int64_t V;      // lanes per vector
  int64_t Qv;     // Q rounded up to V
  int64_t Wl;     // columns per phase
  int64_t RL;     // one packed row: sw * Wl
  int64_t block;  // rows per task (output rows forward, input rows backward)
  int64_t tasks_per_plane;
  int64_t buf_rows;  // packed rows in one task's buffer
};

constexpr int64_t kBufferBudget = 192 * 1024;  // bytes of packed rows per thread: stays in L2

// rows_total: rows to split; in_rows(b): packed rows a block of b rows needs.
template <typename T, typename InRows>
Geometry make_geometry(const PoolShape& s, int64_t rows_total, InRows in_rows) {
  Geometry g;
  g.V = Simd<T>::W;
  g.Qv = ceil_div(s.Q, g.V) * g.V;
  g.Wl = (s.kernel_w - 1) * s.dil_w / s.stride_w + g.Qv;
  g.RL = s.stride_w * g.Wl;
  const int64_t row_bytes = g.RL * static_cast<int64_t>(sizeof(T));
  int64_t b = rows_total;
  while (b > 1 && in_rows(b) * row_bytes > kBufferBudget) b = (b + 1) / 2;
  // Enough tasks for every thread when there are few planes.
  const int64_t planes = s.N * s.C;
  const int64_t want = 4 * static_cast<int64_t>(num_threads());
  if (planes > 0 && planes * ceil_div(rows_total, b) < want) {
    const int64_t blocks = imin(rows_total, ceil_div(want, planes));
    b = imin(b, ceil_div(rows_total, blocks));
  }
  g.block = imax(1, b);
  g.tasks_per_plane = ceil_div(rows_total, g.block);
  g.buf_rows = in_rows(g.block);
  return g;
}

// Copies one input row into its phase-split padded form: out[ph * Wl + t] = in[t*sw + ph - pw], or
// `pad` where that column is outside [0, W). SW > 0 fixes the stride at compile time.
// Lane shuffles of the concatenation (a, b), for any width (its even lanes: simd.h's vevens).
template <typename V, size_t... I>
PYCONV_INLINE V odd_lanes_of(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I + 1)...);
}
// (a_h, b_h, a_{h+1}, b_{h+1}, ...) from lane h = 0 (lo) or W/2 (hi)
template <size_t H, typename V, size_t... I>
PYCONV_INLINE V interleave_of(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (H + I / 2 + (I % 2) * sizeof...(I))...);
}
template <typename V>
constexpr size_t lanes_of = sizeof(V) / sizeof(V{}[0]);
template <typename V>
PYCONV_INLINE V odd_lanes(V a, V b) {
  return odd_lanes_of(a, b, std::make_index_sequence<lanes_of<V>>{});
}
// (a0, b0, a1, b1, ...): the first and second halves of the stride-2 interleave.
template <typename V>
PYCONV_INLINE V interleave_lo(V a, V b) {
  return interleave_of<0>(a, b, std::make_index_sequence<lanes_of<V>>{});
}
template <typename V>
PYCONV_INLINE V interleave_hi(V a, V b) {
  return interleave_of<lanes_of<V> / 2>(a, b, std::make_index_sequence<lanes_of<V>>{});
}

template <typename T, int SW>
void pack_row(const T* in, int64_t W, int64_t pw, int64_t sw_rt, int64_t Wl, T pad, T* out) {
  const int64_t sw = SW > 0 ? SW : sw_rt;
  constexpr int64_t V = Simd<T>::W;
  for (int64_t ph = 0; ph < sw; ++ph) {
    T* o = out + ph * Wl;
    const int64_t lo = pw - ph;           // t*sw >= lo  <=> column >= 0
    const int64_t hi = W - 1 + pw - ph;   // t*sw <= hi  <=> column <= W-1
    const int64_t t0 = imin(Wl, lo <= 0 ? 0 : ceil_div(lo, sw));
    const int64_t t1 = hi < 0 ? t0 : imax(t0, imin(Wl, hi / sw + 1));
    for (int64_t t = 0; t < t0; ++t) o[t] = pad;
    const T* src = in + t0 * sw + ph - pw;
    int64_t t = t0;
    if (SW == 1)
      for (; t + V <= t1; t += V) vstore(o + t, vload(src + (t - t0)));
    if (SW == 2) {  // t + V < t1: the second load ends before the row's last element
      for (; t + V < t1; t += V) {
        const T* p = src + 2 * (t - t0);
        vstore(o + t, vevens(vload(p), vload(p + V)));
      }
      if (t < t1 && t1 - V > t0) {  // the last V columns: odd lanes of a window shifted back by one
        const T* p = src + 2 * (t1 - V - t0) - 1;
        vstore(o + t1 - V, odd_lanes(vload(p), vload(p + V)));
        t = t1;
      }
    }
    for (; t < t1; ++t) o[t] = src[(t - t0) * sw];
    for (t = t1; t < Wl; ++t) o[t] = pad;
  }
}

// The inverse: out[c] = in[(c + pw) % sw][(c + pw) / sw] for every column c of [0, W); columns
// beyond the packed width got no contribution and are 0.
template <typename T, int SW>
void unpack_row(const T* in, int64_t W, int64_t pw, int64_t sw_rt, int64_t Wl, T* out) {
  const int64_t sw = SW > 0 ? SW : sw_rt;
  if (SW == 2) {
    // Columns c0, c0+1, ... pair up as (phase 0, phase 1) of the same t: interleave whole vectors.
    constexpr int64_t V = Simd<T>::W;
    const int64_t c0 = pw & 1, base = (c0 + pw) / 2;
    int64_t i = 0;
    for (; c0 + 2 * (i + V) <= W && base + i + V <= Wl; i += V) {
      const vec_t<T> a = vload(in + base + i), b = vload(in + Wl + base + i);
      vstore(out + c0 + 2 * i, interleave_lo(a, b));
      vstore(out + c0 + 2 * i + V, interleave_hi(a, b));
    }
    auto at = [&](int64_t c) {
      const int64_t j = c + pw, t = j / 2;
      return t < Wl ? in[(j & 1) * Wl + t] : T(0);
    };
    if (c0 == 1) out[0] = at(0);
    for (int64_t c = c0 + 2 * i; c < W; ++c) out[c] = at(c);
    return;
  }
  for (int64_t ph = 0; ph < sw; ++ph) {
    const T* o = in + ph * Wl;
    const int64_t lo = pw - ph, hi = W - 1 + pw - ph;
    if (hi < 0) continue;
    const int64_t t0 = lo <= 0 ? 0 : ceil_div(lo, sw);
    const int64_t t1 = hi / sw + 1;
    const int64_t tc = imin(t1, Wl);
    T* dst = out + t0 * sw + ph - pw;
    for (int64_t t = t0; t < tc; ++t) dst[(t - t0) * sw] = o[t];
    for (int64_t t = imax(t0, tc); t < t1; ++t) dst[(t - t0) * sw] = T(0);
  }
}

template <typename T>
using PackFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, T, T*);
template <typename T>
using UnpackFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, T*);

template <typename T>
PackFn<T> pack_fn(int64_t sw) {
  return sw == 1 ? &pack_row<T, 1> : sw == 2 ? &pack_row<T, 2> : &pack_row<T, 0>;
}
template <typename T>
UnpackFn<T> unpack_fn(int64_t sw) {
  return sw == 1 ? &unpack_row<T, 1> : sw == 2 ? &unpack_row<T, 2> : &unpack_row<T, 0>;
}

// First in-range tap of a window starting at `start` (may be negative) with dilation d.
PYCONV_INLINE int64_t first_tap(int64_t start, int64_t d) { return start >= 0 ? start : start + d * ceil_div(-start, d); }

// Stores the first n lanes of v (all of them with one vector store in the common case).
template <typename T, typename VT>
PYCONV_INLINE void store_lanes(T* p, VT v, int64_t n) {
  if (n * static_cast<int64_t>(sizeof(T)) == static_cast<int64_t>(sizeof(VT)))
    std::memcpy(p, &v, sizeof(VT));
  else
    std::memcpy(p, &v, static_cast<size_t>(n) * sizeof(T));
}

// Runs body(task, thread_buffer) over planes * tasks_per_plane tasks, with per-thread scratch of
// `per_thread` elements of T.
template <typename T, typename Body>
void run_tasks(int64_t tasks, int64_t per_thread, Body body) {
  if (tasks <= 0) return;
  const int nt = static_cast<int>(imin(num_threads(), tasks));
  const int64_t stride = ceil_div(per_thread, 16) * 16;  // 64-byte separation for float
  Workspace ws(checked_bytes(stride * nt, sizeof(T)));
  T* base = ws.as<T>();
#pragma omp parallel num_threads(nt)
  {
    T* buf = base + stride * omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) body(t, buf);
  }
}

// ------------------------------------------------------------- separable forward (values only) ---

// Max and sum are associative and commutative on values (max with NaN sticky), so a window reduces
// as rows first (contiguous vectors straight from x), then the phase-split row across columns.
template <typename T>
struct MaxReduce {
  static T init() { return -std::numeric_limits<T>::infinity(); }
  static PYCONV_INLINE vec_t<T> combine(vec_t<T> m, vec_t<T> v) { return ((v > m) | (v != v)) ? v : m; }
  static PYCONV_INLINE T combine(T m, T v) { return (v > m || v != v) ? v : m; }
};
template <typename T>
struct SumReduce {
  static T init() { return T(0); }
  static PYCONV_INLINE vec_t<T> combine(vec_t<T> m, vec_t<T> v) { return m + v; }
  static PYCONV_INLINE T combine(T m, T v) { return m + v; }
};

// finish(p, qb, acc) -> the output vector of columns [qb, qb + V) of row p.
template <typename T, typename Op, typename Finish>
void separable_forward(const PoolShape& s, const T* x, T* y, Finish finish) {
  using V = vec_t<T>;
  const Geometry g = make_geometry<T>(s, s.P, [](int64_t) { return 1; });
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t Wv = ceil_div(s.W, g.V) * g.V;
  const int64_t span_h = (s.kernel_h - 1) * s.dil_h + 1;
  const PackFn<T> pack = pack_fn<T>(s.stride_w);
  run_tasks<T>(s.N * s.C * g.tasks_per_plane, g.RL + Wv, [&](int64_t task, T* buf) {
    const int64_t plane = task / g.tasks_per_plane;
    const int64_t p0 = (task % g.tasks_per_plane) * g.block, p1 = imin(s.P, p0 + g.block);
    const T* xp = x + plane * HW;
    T* vrow = buf + g.RL;  // the rows of one window reduced, W columns
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t hs = p * s.stride_h - s.pad_h;
      const int64_t ih0 = first_tap(hs, s.dil_h), ih_end = imin(s.H, hs + span_h);
      const T* r0 = xp + ih0 * s.W;
      int64_t c = 0;
      for (; c + g.V <= s.W; c += g.V) {
        V m = vload(r0 + c);
        for (int64_t ih = ih0 + s.dil_h; ih < ih_end; ih += s.dil_h) m = Op::combine(m, vload(xp + ih * s.W + c));
        vstore(vrow + c, m);
      }
      for (; c < s.W; ++c) {
        T m = r0[c];
        for (int64_t ih = ih0 + s.dil_h; ih < ih_end; ih += s.dil_h) m = Op::combine(m, xp[ih * s.W + c]);
        vrow[c] = m;
      }
      pack(vrow, s.W, s.pad_w, s.stride_w, g.Wl, Op::init(), buf);
      T* yrow = y + plane * PQ + p * s.Q;
      for (int64_t qb = 0; qb < s.Q; qb += g.V) {
        V acc = vload(buf + qb);  // tap 0: phase 0, offset 0
        for (int64_t k = 1; k < s.kernel_w; ++k) {
          const int64_t off = k * s.dil_w;
          acc = Op::combine(acc, vload(buf + (off % s.stride_w) * g.Wl + off / s.stride_w + qb));
        }
        store_lanes(yrow + qb, finish(p, qb, acc), imin(g.V, s.Q - qb));
      }
    }
  });
}

// ------------------------------------------------------------------------------- max forward ---

template <typename T>
void max_forward_with_indices(const PoolShape& s, const T* x, T* y, int64_t* indices) {
  using IV = typename Lanes<T>::IV;
  using I = typename Lanes<T>::I;
  using I64V = typename Lanes<T>::I64V;
  using V = vec_t<T>;
  const int64_t span_h = (s.kernel_h - 1) * s.dil_h + 1;
  const Geometry g = make_geometry<T>(s, s.P, [&](int64_t b) { return imin(s.H, (b - 1) * s.stride_h + span_h); });
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  // First in-range column of each output column's window (torch's starting index), and lane offsets.
  Workspace iw0_ws(checked_bytes(g.Qv, sizeof(I)));
  I* iw0 = iw0_ws.as<I>();
  for (int64_t q = 0; q < g.Qv; ++q) iw0[q] = static_cast<I>(q < s.Q ? first_tap(q * s.stride_w - s.pad_w, s.dil_w) : 0);
  const PackFn<T> pack = pack_fn<T>(s.stride_w);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const IV lane_cols = iota_lanes<T>() * static_cast<I>(s.stride_w);

  run_tasks<T>(s.N * s.C * g.tasks_per_plane, g.buf_rows * g.RL, [&](int64_t task, T* buf) {
    const int64_t plane = task / g.tasks_per_plane;
    const int64_t p0 = (task % g.tasks_per_plane) * g.block, p1 = imin(s.P, p0 + g.block);
    const T* xp = x + plane * HW;
    // Input rows [r_lo, r_hi) cover every tap of output rows [p0, p1).
    const int64_t r_lo = imax(0, p0 * s.stride_h - s.pad_h);
    const int64_t r_hi = imin(s.H, (p1 - 1) * s.stride_h - s.pad_h + span_h);
    for (int64_t ih = r_lo; ih < r_hi; ++ih)
      pack(xp + ih * s.W, s.W, s.pad_w, s.stride_w, g.Wl, neg_inf, buf + (ih - r_lo) * g.RL);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t hs = p * s.stride_h - s.pad_h;
      const int64_t ih0 = first_tap(hs, s.dil_h);
      const int64_t ih_end = imin(s.H, hs + span_h);
      T* yrow = y + plane * PQ + p * s.Q;
      int64_t* irow = indices + plane * PQ + p * s.Q;
      for (int64_t qb = 0; qb < s.Q; qb += g.V) {
        V m = vbroadcast<T>(neg_inf);
        IV idx;
        std::memcpy(&idx, iw0 + qb, sizeof idx);
        idx += static_cast<I>(ih0 * s.W);
        for (int64_t ih = ih0; ih < ih_end; ih += s.dil_h) {
          const T* row = buf + (ih - r_lo) * g.RL + qb;
          const IV cols = lane_cols + static_cast<I>(ih * s.W - s.pad_w + qb * s.stride_w);
          for (int64_t k = 0; k < s.kernel_w; ++k) {
            const int64_t off = k * s.dil_w;
            const V v = vload(row + (off % s.stride_w) * g.Wl + off / s.stride_w);
            const auto take = (v > m) | (v != v);
            m = take ? v : m;
            idx = take ? cols + static_cast<I>(off) : idx;
          }
        }
        const int64_t n = imin(g.V, s.Q - qb);
        store_lanes(yrow + qb, m, n);
        store_lanes(irow + qb, __builtin_convertvector(idx, I64V), n);
      }
    }
  });
}

// ------------------------------------------------------------------------------- avg forward ---

// Divisor factors: div(p, q) = rows(p) * cols(q), or divisor_override.
PYCONV_INLINE int64_t avg_extent(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size, bool include_pad) {
  const int64_t start = o * stride - pad;
  const int64_t end = imin(start + k, size + pad);
  if (include_pad) return end - start;
  return imin(end, size) - imax(start, 0);
}

template <typename T>
void avg_forward_impl(const PoolShape& s, const T* x, T* y, bool include_pad, int64_t divisor_override) {
  using V = vec_t<T>;
  const int64_t Qv = ceil_div(s.Q, Simd<T>::W) * Simd<T>::W;
  Workspace cols_ws(checked_bytes(Qv, sizeof(T)));
  T* col_div = cols_ws.as<T>();
  for (int64_t q = 0; q < Qv; ++q)
    col_div[q] = q < s.Q ? T(avg_extent(q, s.stride_w, s.pad_w, s.kernel_w, s.W, include_pad)) : T(1);
  separable_forward<T, SumReduce<T>>(s, x, y, [&](int64_t p, int64_t qb, V acc) {
    if (divisor_override) return acc / vbroadcast<T>(T(divisor_override));
    const T row_div = T(avg_extent(p, s.stride_h, s.pad_h, s.kernel_h, s.H, include_pad));
    return acc / (vload(col_div + qb) * row_div);
  });
}

// ------------------------------------------------------------------------------ avg backward ---

template <typename T>
void avg_backward_impl(const PoolShape& s, const T* gy, T* gx, bool include_pad, int64_t divisor_override) {
  using V = vec_t<T>;
  // Tasks own blocks of input rows, so no two tasks write the same gx element.
  const Geometry g = make_geometry<T>(s, s.H, [](int64_t b) { return b; });
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  Workspace cols_ws(checked_bytes(g.Qv, sizeof(T)));
  T* col_div = cols_ws.as<T>();
  for (int64_t q = 0; q < g.Qv; ++q)
    col_div[q] = q < s.Q ? T(avg_extent(q, s.stride_w, s.pad_w, s.kernel_w, s.W, include_pad)) : T(1);
  const UnpackFn<T> unpack = unpack_fn<T>(s.stride_w);

  // Per thread: the accumulator rows, then one scaled gradient row (zero beyond Q).
  run_tasks<T>(s.N * s.C * g.tasks_per_plane, g.buf_rows * g.RL + g.Qv, [&](int64_t task, T* buf) {
    const int64_t plane = task / g.tasks_per_plane;
    const int64_t i0 = (task % g.tasks_per_plane) * g.block, i1 = imin(s.H, i0 + g.block);
    T* grow = buf + g.buf_rows * g.RL;
    for (int64_t j = 0; j < (i1 - i0) * g.RL; ++j) buf[j] = T(0);
    for (int64_t q = s.Q; q < g.Qv; ++q) grow[q] = T(0);
    // Output rows whose windows [p*sh - ph, p*sh - ph + kh) meet [i0, i1).
    const int64_t lo_num = i0 + s.pad_h - s.kernel_h + 1;
    const int64_t p_lo = lo_num <= 0 ? 0 : ceil_div(lo_num, s.stride_h);
    const int64_t p_hi = imin(s.P, (i1 - 1 + s.pad_h) / s.stride_h + 1);
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const T* gyrow = gy + plane * PQ + p * s.Q;
      const T row_div = divisor_override ? T(1) : T(avg_extent(p, s.stride_h, s.pad_h, s.kernel_h, s.H, include_pad));
      const V d_row = vbroadcast<T>(divisor_override ? T(divisor_override) : row_div);
      int64_t q = 0;
      for (; q + g.V <= s.Q; q += g.V)
        vstore(grow + q, vload(gyrow + q) / (divisor_override ? d_row : vload(col_div + q) * d_row));
      for (; q < s.Q; ++q) grow[q] = gyrow[q] / (divisor_override ? T(divisor_override) : col_div[q] * row_div);
      const int64_t hs = p * s.stride_h - s.pad_h;
      for (int64_t ih = imax(hs, i0); ih < imin(hs + s.kernel_h, i1); ++ih) {
        T* acc = buf + (ih - i0) * g.RL;
        for (int64_t k = 0; k < s.kernel_w; ++k) {
          T* a = acc + (k % s.stride_w) * g.Wl + k / s.stride_w;
          for (int64_t qb = 0; qb < g.Qv; qb += g.V) vstore(a + qb, vload(a + qb) + vload<T>(grow + qb));
        }
      }
    }
    for (int64_t ih = i0; ih < i1; ++ih)
      unpack(buf + (ih - i0) * g.RL, s.W, s.pad_w, s.stride_w, g.Wl, gx + plane * HW + ih * s.W);
  });
}

}  // namespace

template <typename T>
void max_pool2d_forward(const PoolShape& s, const T* x, T* y, int64_t* indices) {
  if (indices)
    max_forward_with_indices<T>(s, x, y, indices);
  else
    separable_forward<T, MaxReduce<T>>(s, x, y, [](int64_t, int64_t, vec_t<T> acc) { return acc; });
}

template <typename T>
int64_t max_pool2d_backward(const PoolShape& s, const T* gy, const int64_t* indices, T* gx) {
  // Tasks own blocks of input rows; each scans the output rows whose windows can reach its block
  // and adds the gradients whose index lands there.
  const Geometry g = make_geometry<T>(s, s.H, [](int64_t b) { return b; });
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t span_h = (s.kernel_h - 1) * s.dil_h + 1;
  const int64_t tasks = s.N * s.C * g.tasks_per_plane;
  int64_t bad = 0;
  if (tasks <= 0) return 0;
#pragma omp parallel for num_threads(static_cast<int>(imin(num_threads(), tasks))) schedule(static) reduction(+ : bad)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t plane = task / g.tasks_per_plane;
    const int64_t i0 = (task % g.tasks_per_plane) * g.block, i1 = imin(s.H, i0 + g.block);
    T* gxp = gx + plane * HW;
    for (int64_t j = i0 * s.W; j < i1 * s.W; ++j) gxp[j] = T(0);
    const int64_t lo_num = i0 + s.pad_h - span_h + 1;
    const int64_t p_lo = lo_num <= 0 ? 0 : ceil_div(lo_num, s.stride_h);
    const int64_t p_hi = imin(s.P, (i1 - 1 + s.pad_h) / s.stride_h + 1);
    const int64_t j_lo = i0 * s.W, j_hi = i1 * s.W;
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const int64_t* irow = indices + plane * PQ + p * s.Q;
      const T* grow = gy + plane * PQ + p * s.Q;
      for (int64_t q = 0; q < s.Q; ++q) {
        const int64_t j = irow[q];
        if (j >= j_lo && j < j_hi)
          gxp[j] += grow[q];
        else if (j < 0 || j >= HW)
          ++bad;
      }
    }
  }
  return bad;
}

namespace {
bool is_global(const PoolShape& s) {
  return s.P == 1 && s.Q == 1 && s.kernel_h == s.H && s.kernel_w == s.W && s.pad_h == 0 && s.pad_w == 0 &&
         s.dil_h == 1 && s.dil_w == 1;
}
}  // namespace

template <typename T>
void avg_pool2d_forward(const PoolShape& s, const T* x, T* y, bool count_include_pad, int64_t divisor_override) {
  if (is_global(s)) {
    const int64_t HW = s.H * s.W;
    const double div = divisor_override ? double(divisor_override) : double(HW);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) y[nc] = T(sum_row(x + nc * HW, HW) / div);
    return;
  }
  avg_forward_impl<T>(s, x, y, count_include_pad, divisor_override);
}

template <typename T>
void avg_pool2d_backward(const PoolShape& s, const T* gy, T* gx, bool count_include_pad, int64_t divisor_override) {
  if (is_global(s)) {
    const int64_t HW = s.H * s.W;
    const T div = divisor_override ? T(divisor_override) : T(HW);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const T g = gy[nc] / div;
      for (int64_t i = 0; i < HW; ++i) gx[nc * HW + i] = g;
    }
    return;
  }
  avg_backward_impl<T>(s, gy, gx, count_include_pad, divisor_override);
}

#define PYCONV_INSTANTIATE(T)                                                                         \
  template void max_pool2d_forward<T>(const PoolShape&, const T*, T*, int64_t*);                     \
  template int64_t max_pool2d_backward<T>(const PoolShape&, const T*, const int64_t*, T*);           \
  template void avg_pool2d_forward<T>(const PoolShape&, const T*, T*, bool, int64_t);               \
  template void avg_pool2d_backward<T>(const PoolShape&, const T*, T*, bool, int64_t);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
