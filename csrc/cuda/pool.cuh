// 2-D max / average pooling over N*C planes, one thread per element, 64-bit indices.
//
//   max fprop   y[p,q] = max_{i,j} x[p*sh-ph+i*dh, q*sw-pw+j*dw] over in-range taps (a NaN wins, like
//               torch); idx[p,q] = h*W+w of the first maximum
//   max bprop   gx[h,w] = sum_{p,q : idx[p,q] = h*W+w} gy[p,q]  -- a gather over the windows that can
//               contain (h,w), so every gx element is written once, without atomics
//   avg fprop   y[p,q] = sum_{window in range} x / d, d = divisor_override, or the window's area clipped
//               to the padded input (count_include_pad), or clipped to the input
//   avg bprop   gx[h,w] = sum_{p,q : (h,w) in window(p,q)} gy[p,q] / d(p,q)
#pragma once
#include "cuda/conv_direct.cuh"

namespace pyconv {
namespace kern {

// Output rows (or columns) whose window starts at most `span-1` before `h`: [lo, hi].
PYCONV_HD void covering_outputs(int64_t h, int64_t pad, int64_t stride, int64_t span, int64_t out, int64_t& lo,
                                int64_t& hi) {
  const int64_t hp = h + pad;  // window p covers hp iff p*stride <= hp < p*stride + span
  lo = hp < span ? 0 : (hp - span) / stride + 1;
  hi = hp / stride;
  if (hi > out - 1) hi = out - 1;
}

template <typename T>
PYCONV_GLOBAL void max_pool_fprop_kernel(PoolDims s, const T* x, T* y, int64_t* idx) {
  const int64_t total = s.N * s.C * s.P * s.Q;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t q = i % s.Q, p = (i / s.Q) % s.P, plane = i / (s.Q * s.P);
    const T* xp = x + plane * s.H * s.W;
    bool found = false;
    T best = T(0);
    int64_t best_at = -1;
    for (int64_t a = 0; a < s.kernel_h; ++a) {
      const int64_t h = p * s.stride_h - s.pad_h + a * s.dil_h;
      if (h < 0 || h >= s.H) continue;
      for (int64_t b = 0; b < s.kernel_w; ++b) {
        const int64_t v = q * s.stride_w - s.pad_w + b * s.dil_w;
        if (v < 0 || v >= s.W) continue;
        const T val = xp[h * s.W + v];
        if (!found || val > best || val != val) {  // the last NaN wins, as in torch
          best = val, best_at = h * s.W + v, found = true;
        }
      }
    }
    y[i] = best;
    idx[i] = best_at;
  }
}

template <typename T>
PYCONV_GLOBAL void max_pool_bprop_kernel(PoolDims s, const T* gy, const int64_t* idx, T* gx) {
  const int64_t total = s.N * s.C * s.H * s.W;
  const int64_t span_h = s.dil_h * (s.kernel_h - 1) + 1, span_w = s.dil_w * (s.kernel_w - 1) + 1;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t hw = i % (s.H * s.W), plane = i / (s.H * s.W);
    const int64_t h = hw / s.W, v = hw % s.W;
    int64_t p0, p1, q0, q1;
    covering_outputs(h, s.pad_h, s.stride_h, span_h, s.P, p0, p1);
    covering_outputs(v, s.pad_w, s.stride_w, span_w, s.Q, q0, q1);
    T acc = T(0);
    for (int64_t p = p0; p <= p1; ++p)
      for (int64_t q = q0; q <= q1; ++q) {
        const int64_t o = (plane * s.P + p) * s.Q + q;
        if (idx[o] == hw) acc += gy[o];
      }
    gx[i] = acc;
  }
}

// torch's window bounds and divisor for output (p, q).
struct AvgWindow {
  int64_t h0, h1, w0, w1;
  int64_t divisor;
};

PYCONV_HD AvgWindow avg_window(const PoolDims& s, int64_t p, int64_t q, bool count_include_pad, int64_t div) {
  int64_t h0 = p * s.stride_h - s.pad_h, w0 = q * s.stride_w - s.pad_w;
  int64_t h1 = h0 + s.kernel_h, w1 = w0 + s.kernel_w;
  if (h1 > s.H + s.pad_h) h1 = s.H + s.pad_h;
  if (w1 > s.W + s.pad_w) w1 = s.W + s.pad_w;
  const int64_t padded_area = (h1 - h0) * (w1 - w0);
  if (h0 < 0) h0 = 0;
  if (w0 < 0) w0 = 0;
  if (h1 > s.H) h1 = s.H;
  if (w1 > s.W) w1 = s.W;
  const int64_t d = div ? div : count_include_pad ? padded_area : (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, d};
}

template <typename T>
PYCONV_GLOBAL void avg_pool_fprop_kernel(PoolDims s, const T* x, T* y, bool count_include_pad, int64_t div) {
  const int64_t total = s.N * s.C * s.P * s.Q;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t q = i % s.Q, p = (i / s.Q) % s.P, plane = i / (s.Q * s.P);
    const AvgWindow win = avg_window(s, p, q, count_include_pad, div);
    const T* xp = x + plane * s.H * s.W;
    T acc = T(0);
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t v = win.w0; v < win.w1; ++v) acc += xp[h * s.W + v];
    // An empty window (only possible with ceil_mode) averages to 0, as in torch.
    y[i] = (win.h0 < win.h1 && win.w0 < win.w1) ? acc / T(win.divisor) : T(0);
  }
}

template <typename T>
PYCONV_GLOBAL void avg_pool_bprop_kernel(PoolDims s, const T* gy, T* gx, bool count_include_pad, int64_t div) {
  const int64_t total = s.N * s.C * s.H * s.W;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t hw = i % (s.H * s.W), plane = i / (s.H * s.W);
    const int64_t h = hw / s.W, v = hw % s.W;
    int64_t p0, p1, q0, q1;
    covering_outputs(h, s.pad_h, s.stride_h, s.kernel_h, s.P, p0, p1);
    covering_outputs(v, s.pad_w, s.stride_w, s.kernel_w, s.Q, q0, q1);
    T acc = T(0);
    for (int64_t p = p0; p <= p1; ++p)
      for (int64_t q = q0; q <= q1; ++q) {
        const AvgWindow win = avg_window(s, p, q, count_include_pad, div);
        if (h >= win.h0 && h < win.h1 && v >= win.w0 && v < win.w1)
          acc += gy[(plane * s.P + p) * s.Q + q] / T(win.divisor);
      }
    gx[i] = acc;
  }
}

template <typename T>
void max_pool_fprop(const PoolDims& s, const T* x, T* y, int64_t* idx, stream_t st) {
  launch(&max_pool_fprop_kernel<T>, {elementwise_blocks(s.N * s.C * s.P * s.Q), 1, 1}, {kElementwiseThreads, 1, 1},
         st, "max_pool_fprop", s, x, y, idx);
}

template <typename T>
void max_pool_bprop(const PoolDims& s, const T* gy, const int64_t* idx, T* gx, stream_t st) {
  launch(&max_pool_bprop_kernel<T>, {elementwise_blocks(s.N * s.C * s.H * s.W), 1, 1}, {kElementwiseThreads, 1, 1},
         st, "max_pool_bprop", s, gy, idx, gx);
}

template <typename T>
void avg_pool_fprop(const PoolDims& s, const T* x, T* y, bool count_include_pad, int64_t divisor, stream_t st) {
  launch(&avg_pool_fprop_kernel<T>, {elementwise_blocks(s.N * s.C * s.P * s.Q), 1, 1}, {kElementwiseThreads, 1, 1},
         st, "avg_pool_fprop", s, x, y, count_include_pad, divisor);
}

template <typename T>
void avg_pool_bprop(const PoolDims& s, const T* gy, T* gx, bool count_include_pad, int64_t divisor, stream_t st) {
  launch(&avg_pool_bprop_kernel<T>, {elementwise_blocks(s.N * s.C * s.H * s.W), 1, 1}, {kElementwiseThreads, 1, 1},
         st, "avg_pool_bprop", s, gy, gx, count_include_pad, divisor);
}

}  // namespace kern
}  // namespace pyconv
