// The activations of the fused ops, grid-stride, elementwise:
//   forward   x = act(x + r), in place   r: an optional residual; act none, ReLU max(v, 0) or ReLU6
//             min(max(v, 0), 6) (pyconv.problem.ACTIVATIONS); NaN compares false and stays NaN
//   backward  gx = z <= 0 ? 0 : gz       (ReLU: torch's threshold_backward on the output z)
// Vectorized: with every pointer 16-byte aligned (checked on the host), each thread moves W = 16 /
// sizeof(T) elements per load/store (one 128-bit access); the n % W tail is done element by element.
#pragma once
#include "cuda/conv_direct.cuh"

namespace pyconv {
namespace kern {

// W elements of T moved as one aligned 16-byte access (ld/st.global.v4 / v2 under nvcc).
template <typename T, int W>
struct alignas(W * sizeof(T)) Packet {
  T v[W];
};

template <int Act, typename T>
PYCONV_DEVICE T activate(T v) {
  if (Act >= kActRelu) v = v < T(0) ? T(0) : v;
  if (Act == kActRelu6) v = v > T(6) ? T(6) : v;
  return v;
}

template <typename T>
PYCONV_DEVICE T relu_grad_of(T gz, T z) { return z <= T(0) ? T(0) : gz; }

template <typename T, int W, int Act>
PYCONV_GLOBAL void activation_forward_kernel(T* x, const T* r, int64_t n) {
  using P = Packet<T, W>;
  const int64_t packets = n / W;
  for (int64_t i = global_thread_index(); i < packets; i += global_thread_count()) {
    P p = reinterpret_cast<const P*>(x)[i];
    if (r != nullptr) {
      const P q = reinterpret_cast<const P*>(r)[i];
      PYCONV_UNROLL
      for (int j = 0; j < W; ++j) p.v[j] += q.v[j];
    }
    PYCONV_UNROLL
    for (int j = 0; j < W; ++j) p.v[j] = activate<Act>(p.v[j]);
    reinterpret_cast<P*>(x)[i] = p;
  }
  for (int64_t i = packets * W + global_thread_index(); i < n; i += global_thread_count())
    x[i] = activate<Act>(r != nullptr ? x[i] + r[i] : x[i]);
}

template <typename T, int W>
PYCONV_GLOBAL void relu_backward_kernel(const T* gz, const T* z, T* gx, int64_t n) {
  using P = Packet<T, W>;
  const int64_t packets = n / W;
  for (int64_t i = global_thread_index(); i < packets; i += global_thread_count()) {
    const P g = reinterpret_cast<const P*>(gz)[i], zz = reinterpret_cast<const P*>(z)[i];
    P out;
    PYCONV_UNROLL
    for (int j = 0; j < W; ++j) out.v[j] = relu_grad_of(g.v[j], zz.v[j]);
    reinterpret_cast<P*>(gx)[i] = out;
  }
  for (int64_t i = packets * W + global_thread_index(); i < n; i += global_thread_count())
    gx[i] = relu_grad_of(gz[i], z[i]);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int Act>
void activation_fprop_as(int64_t n, T* x, const T* r, stream_t st) {
  constexpr int W = 16 / sizeof(T);
  if (aligned16(x) && (r == nullptr || aligned16(r)))
    launch(&activation_forward_kernel<T, W, Act>, {elementwise_blocks(ceil_div(n, W)), 1, 1},
           {kElementwiseThreads, 1, 1}, st, "activation_forward", x, r, n);
  else
    launch(&activation_forward_kernel<T, 1, Act>, {elementwise_blocks(n), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "activation_forward", x, r, n);
}

template <typename T>
void activation_fprop(int64_t n, T* x, const T* r, int act, stream_t st) {
  if (act == kActNone) return activation_fprop_as<T, kActNone>(n, x, r, st);
  if (act == kActRelu) return activation_fprop_as<T, kActRelu>(n, x, r, st);
  activation_fprop_as<T, kActRelu6>(n, x, r, st);
}

template <typename T>
void relu_bprop(int64_t n, const T* gz, const T* z, T* gx, stream_t st) {
  constexpr int W = 16 / sizeof(T);
  if (aligned16(gz) && aligned16(z) && aligned16(gx))
    launch(&relu_backward_kernel<T, W>, {elementwise_blocks(ceil_div(n, W)), 1, 1}, {kElementwiseThreads, 1, 1},
           st, "relu_backward", gz, z, gx, n);
  else
    launch(&relu_backward_kernel<T, 1>, {elementwise_blocks(n), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "relu_backward", gz, z, gx, n);
}

}  // namespace kern
}  // namespace pyconv
