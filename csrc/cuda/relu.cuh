// ReLU of the fused conv-BN-ReLU op, grid-stride, elementwise:
//   forward   x = x < 0 ? 0 : x, in place   (NaN compares false and stays NaN, as torch.relu)
//   backward  gx = z <= 0 ? 0 : gz          (torch's threshold_backward on the output z)
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

template <typename T>
PYCONV_DEVICE T relu_of(T v) { return v < T(0) ? T(0) : v; }

template <typename T>
PYCONV_DEVICE T relu_grad_of(T gz, T z) { return z <= T(0) ? T(0) : gz; }

template <typename T, int W>
PYCONV_GLOBAL void relu_forward_kernel(T* x, int64_t n) {
  using P = Packet<T, W>;
  const int64_t packets = n / W;
  for (int64_t i = global_thread_index(); i < packets; i += global_thread_count()) {
    P p = reinterpret_cast<const P*>(x)[i];
    PYCONV_UNROLL
    for (int j = 0; j < W; ++j) p.v[j] = relu_of(p.v[j]);
    reinterpret_cast<P*>(x)[i] = p;
  }
  for (int64_t i = packets * W + global_thread_index(); i < n; i += global_thread_count()) x[i] = relu_of(x[i]);
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

template <typename T>
void relu_fprop(int64_t n, T* x, stream_t st) {
  constexpr int W = 16 / sizeof(T);
  if (aligned16(x))
    launch(&relu_forward_kernel<T, W>, {elementwise_blocks(ceil_div(n, W)), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "relu_forward", x, n);
  else
    launch(&relu_forward_kernel<T, 1>, {elementwise_blocks(n), 1, 1}, {kElementwiseThreads, 1, 1}, st,
           "relu_forward", x, n);
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
