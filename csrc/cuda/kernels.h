// Host entry points of the CUDA kernels (csrc/cuda/*.cuh). Plain C++: included by the bindings,
// which are compiled by the host compiler. The definitions are instantiated twice, by nvcc in
// csrc/cuda/*.cu (pyconv._C_cuda, device pointers) and by g++ in csrc/cuda_emu/emu_kernels.cpp
// (pyconv._C_cuda_emu, host pointers run through the launch emulator). Every function launches on
// `stream` and returns without synchronizing.
#pragma once
#include <cstdint>

#include "common/shapes.h"

namespace pyconv {
namespace kern {

using stream_t = void*;

// Pooling over N*C planes of H x W, output P x Q (the fields of pyconv._args.PoolShape).
struct PoolDims {
  int64_t N, C, H, W, P, Q, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// Batch norm over N x C x L.
struct BatchNormDims {
  int64_t N, C, L;
};

// ---- convolution: direct (one thread per output element) -------------------------------------
template <typename T>
void conv_direct_fprop(const ConvShape& s, const T* x, const T* w, const T* b, T* y, stream_t st);
template <typename T>
void conv_direct_dgrad(const ConvShape& s, const T* gy, const T* w, T* gx, stream_t st);
template <typename T>
void conv_direct_wgrad(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb, stream_t st);

// ---- convolution: implicit GEMM (shared-memory tiles of the virtual im2col matrix) ------------
template <typename T>
void conv_igemm_fprop(const ConvShape& s, const T* x, const T* w, const T* b, T* y, stream_t st);
template <typename T>
void conv_igemm_dgrad(const ConvShape& s, const T* gy, const T* w, T* gx, stream_t st);
// ws: conv_igemm_wgrad_workspace(s) elements of T (may be 0 -> nullptr).
template <typename T>
void conv_igemm_wgrad(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb, T* ws, stream_t st);

// Implicit-GEMM tile of every problem: BM x BN outputs per block of 256 threads, BK reduction slab.
constexpr int kIgemmBM = 64, kIgemmBN = 64, kIgemmBK = 8;

// Split-K factor of the weight gradient: its reduction runs over N*P*Q, usually far longer than
// the Kg x Cg*R*S output has tiles, so the reduction is cut into `splits` slabs (multiples of BK)
// summed afterwards in a fixed order (deterministic). Depends on the shape only, not the device.
inline int64_t conv_igemm_wgrad_splits(const ConvShape& s) {
  const int64_t Kg = s.K / s.G, CRS = (s.C / s.G) * s.R * s.S, NPQ = s.N * s.P * s.Q;
  const int64_t tiles = ((Kg + kIgemmBM - 1) / kIgemmBM) * ((CRS + kIgemmBN - 1) / kIgemmBN) * s.G;
  const int64_t want = (264 + tiles - 1) / tiles;             // about two waves of 132 SMs
  const int64_t most = (NPQ + 8 * kIgemmBK - 1) / (8 * kIgemmBK);  // at least 8 slabs of BK per split
  int64_t splits = want < most ? want : most;
  if (splits > 64) splits = 64;
  if (splits * s.G > 65535) splits = 65535 / s.G;
  return splits < 1 ? 1 : splits;
}

inline int64_t conv_igemm_wgrad_workspace(const ConvShape& s) {
  const int64_t splits = conv_igemm_wgrad_splits(s);
  return splits > 1 ? splits * s.K * (s.C / s.G) * s.R * s.S : 0;
}

// ---- pooling ------------------------------------------------------------------------------------
template <typename T>
void max_pool_fprop(const PoolDims& s, const T* x, T* y, int64_t* idx, stream_t st);
template <typename T>
void max_pool_bprop(const PoolDims& s, const T* gy, const int64_t* idx, T* gx, stream_t st);
template <typename T>
void avg_pool_fprop(const PoolDims& s, const T* x, T* y, bool count_include_pad, int64_t divisor, stream_t st);
template <typename T>
void avg_pool_bprop(const PoolDims& s, const T* gy, T* gx, bool count_include_pad, int64_t divisor, stream_t st);

// ---- batch norm ---------------------------------------------------------------------------------
// relu: y = max(bn(x), 0) in the normalize sweep. stats (training only, may be null): [2][C] float64
// per-channel sum x and sum x^2 from conv_*_fprop_stats, used instead of a statistics pass over x.
template <typename T>
void batch_norm_fprop(const BatchNormDims& s, const T* x, const T* w, const T* b, T* running_mean,
                      T* running_var, T* y, T* save_mean, T* save_invstd, bool training, double momentum,
                      double eps, bool relu, const double* stats, stream_t st);
// ws: 2*C elements of T (per-channel sums of gy and gy*xhat). z (may be null): the ReLU output whose
// mask (z > 0) is applied to gy inside the kernels.
template <typename T>
void batch_norm_bprop(const BatchNormDims& s, const T* gy, const T* x, const T* w, const T* save_mean,
                      const T* save_invstd, const T* z, T* gx, T* gw, T* gb, T* ws, bool training, stream_t st);

// ---- ReLU (conv-BN-ReLU) --------------------------------------------------------------------------
template <typename T>
void relu_fprop(int64_t n, T* x, stream_t st);
template <typename T>
void relu_bprop(int64_t n, const T* gz, const T* z, T* gx, stream_t st);

// ---- convolution forward with per-channel output statistics (conv-BN fusion) --------------------
// y as conv_*_fprop, and stats[0][k] = sum_{n,p,q} y, stats[1][k] = sum y^2 (float64), accumulated
// by the kernel's epilogue: each block reduces its outputs per channel into one partial, ws[2][parts][K],
// and a second kernel adds the parts in a fixed order (deterministic, no atomics).
template <typename T>
void conv_direct_fprop_stats(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                             double* ws, stream_t st);
template <typename T>
void conv_igemm_fprop_stats(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                            double* ws, stream_t st);

// Direct conv with stats: block (k, part) reduces channel k over a strided share of the N*P*Q outputs.
constexpr int64_t kDirectStatsMaxParts = 256;
inline int64_t conv_direct_stats_parts(const ConvShape& s) {
  const int64_t per_channel = (s.N * s.P * s.Q + 255) / 256;                    // blocks of 256 outputs
  const int64_t want = s.K > 0 ? (1024 + s.K - 1) / s.K : 1;                       // >= ~1024 blocks in all
  const int64_t parts = per_channel < want ? per_channel : want;
  return parts < 1 ? 1 : (parts > kDirectStatsMaxParts ? kDirectStatsMaxParts : parts);
}
// Implicit GEMM with stats: one partial per (tile column, channel).
inline int64_t conv_igemm_stats_parts(const ConvShape& s) {
  const int64_t cols = (s.N * s.P * s.Q + kIgemmBN - 1) / kIgemmBN;
  return cols < 1 ? 1 : cols;
}
// Elements of float64 workspace conv_*_fprop_stats needs.
inline int64_t conv_fprop_stats_workspace(const ConvShape& s, bool igemm) {
  return 2 * s.K * (igemm ? conv_igemm_stats_parts(s) : conv_direct_stats_parts(s));
}

}  // namespace kern
}  // namespace pyconv
