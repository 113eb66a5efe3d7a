// Host entry points of the CUDA kernels (csrc/cuda/*.cuh). Plain C++: included by the bindings,
// which are compiled by the host compiler. The definitions are instantiated twice, by nvcc in
// csrc/cuda/*.cu (pyconv._C_cuda, device pointers) and by g++ in csrc/cuda_emu/emu_kernels.cpp
// (pyconv._C_cuda_emu, host pointers run through the launch emulator). Every function launches on
// `stream` and returns without synchronizing.
#pragma once
#include <cstdint>

#include "common/error.h"

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

// ---- convolution: Winograd F(m x m, 3 x 3), m in {2, 4} (3x3, stride 1, dilation 1; the binding
// checks the shape) --------------------------------------------------------------------------------
// One stride-1 3x3 convolution per group: Cin -> Kout channels, H x W -> P x Q, top/left padding
// (negative = crop). The forward pass runs winograd_forward_conv(s); grad-input runs the same
// algorithm on winograd_backward_input_conv(s) (gy convolved with the rotated, transposed filter).
struct WinogradConv {
  int64_t N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w;
};

inline WinogradConv winograd_forward_conv(const ConvShape& s) {
  return {s.N, s.G, s.C / s.G, s.K / s.G, s.H, s.W, s.P, s.Q, s.pad_h, s.pad_w};
}

inline WinogradConv winograd_backward_input_conv(const ConvShape& s) {
  return {s.N, s.G, s.K / s.G, s.C / s.G, s.P, s.Q, s.H, s.W, 2 - s.pad_h, 2 - s.pad_w};
}

inline int64_t winograd_tiles(const WinogradConv& c, int m) {
  return c.N * ((c.P + m - 1) / m) * ((c.Q + m - 1) / m);
}

// Split-K factor of the grad-weight GEMMs (reduction over tiles), chosen like the implicit GEMM's.
inline int64_t conv_winograd_wgrad_splits(const WinogradConv& c, int m) {
  const int64_t batches = (m + 2) * (m + 2) * c.G;
  const int64_t blocks = ((c.Kout + kIgemmBM - 1) / kIgemmBM) * ((c.Cin + kIgemmBN - 1) / kIgemmBN) * batches;
  const int64_t want = (264 + blocks - 1) / blocks;
  const int64_t most = (winograd_tiles(c, m) + 8 * kIgemmBK - 1) / (8 * kIgemmBK);
  int64_t splits = want < most ? want : most;
  if (splits > 64) splits = 64;
  if (splits * batches > 65535) splits = 65535 / batches;
  return splits < 1 ? 1 : splits;
}

enum class WinogradPass { fprop, dgrad, wgrad };

// Elements of T the caller allocates for one pass (0 when there is nothing to compute), checked
// against int64 overflow:
//   fprop / dgrad  U [a2][G*Kout][Cin] | V [a2][G*Cin][tiles] | M [a2][G*Kout][tiles]
//   wgrad          V [a2][G*Cin][tiles] | Z [a2][G*Kout][tiles] | partials [splits][a2][G*Kout][Cin]
inline int64_t conv_winograd_workspace(const ConvShape& s, int m, WinogradPass pass) {
  const WinogradConv c = pass == WinogradPass::dgrad ? winograd_backward_input_conv(s) : winograd_forward_conv(s);
  const int64_t a2 = (m + 2) * (m + 2), tiles = winograd_tiles(c, m);
  const int64_t Ktot = c.G * c.Kout, Ctot = c.G * c.Cin;
  if (Ktot == 0 || (pass != WinogradPass::wgrad && tiles == 0) || (pass == WinogradPass::wgrad && c.Cin == 0))
    return 0;
  const int64_t lim = INT64_MAX / 4;
  auto mul = [&](int64_t a, int64_t b) {
    if (a != 0 && b > lim / a) fail("conv_winograd: workspace size overflows int64");
    return a * b;
  };
  const int64_t rows = pass == WinogradPass::wgrad ? mul(conv_winograd_wgrad_splits(c, m), Ktot) : Ktot;
  const int64_t filt = mul(mul(a2, rows), c.Cin);
  const int64_t data = mul(mul(a2, Ctot + Ktot), tiles);
  if (filt > lim - data) fail("conv_winograd: workspace size overflows int64");
  return filt + data;
}

template <typename T>
void conv_winograd_fprop(const ConvShape& s, int m, const T* x, const T* w, const T* b, T* y, T* ws, stream_t st);
template <typename T>
void conv_winograd_dgrad(const ConvShape& s, int m, const T* gy, const T* w, T* gx, T* ws, stream_t st);
template <typename T>
void conv_winograd_wgrad(const ConvShape& s, int m, const T* x, const T* gy, T* gw, T* gb, T* ws, stream_t st);

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

// ---- activations of the fused ops (conv-BN-ReLU, the inference epilogue) -----------------------
// The activation indices: the order of pyconv.problem.ACTIVATIONS.
enum Activation : int { kActNone = 0, kActRelu = 1, kActRelu6 = 2 };
// x = act(x + residual) in place (residual may be null).
template <typename T>
void activation_fprop(int64_t n, T* x, const T* residual, int act, stream_t st);
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
// The same statistics of an output y another algorithm (Winograd) wrote; ws as the direct conv's.
template <typename T>
void conv_output_stats(const ConvShape& s, T* y, double* stats, double* ws, stream_t st);

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
