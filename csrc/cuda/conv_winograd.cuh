// Winograd convolution F(m x m, 3 x 3), m in {2, 4}, alpha = m + 2, NCHW, stride 1, dilation 1, any
// padding and group count (Lavin & Gray 2016; the same matrices as csrc/cpu/winograd.cpp).
//
// The output is cut into m x m tiles t = (n, ti, tj), tiles = N * ceil(P/m) * ceil(Q/m); tile t reads
// the alpha x alpha patch d = x[n, c, ti*m - pad_h + [0, alpha), tj*m - pad_w + [0, alpha)] (zero outside).
//
//   forward      U[xi][c][k] = (G g[k,c] G^T)[xi]                        filter transform kernel
//                V[xi][c][t] = (B^T d[c,t] B)[xi]                        input transform kernel
//                M[xi][k][t] = sum_{c in group} U[xi][c][k] * V[xi][c][t]  alpha^2 * G GEMMs
//                y[k, tile t] = (A^T M[.][k][t] A)[:P, :Q] + b[k]        output transform kernel
//   grad-input   the stride-1 convolution of gy (K -> C channels per group, P x Q -> H x W) with the
//                rotated, channel-transposed filter w'[c][k][r][s] = w[k][c][2-r][2-s] and padding
//                2 - pad (negative = crop): the forward path on a different WinogradConv
//   grad-weight  the adjoint of the forward: Z[xi][t][k] = (A dY[k,t] A^T)[xi] (dY zero outside P x Q),
//                dU[xi][k][c] = sum_t Z[xi][t][k] * V'[xi][t][c]  (V' = the input transform, tile-major;
//                alpha^2 * G GEMMs reducing over tiles, split-K into `splits` slabs written to separate
//                partials), then one kernel sums the
//                partials in the fixed order j = 0..splits-1 and writes dg[k,c] = G^T dU[.][k][c] G
//                (deterministic, no atomics);  grad-bias gb[k] = sum_{n,p,q} gy[n,k,p,q]
//
//   Matrices: csrc/common/winograd_matrices.h (generated from the table WINOGRAD in pyconv/problem.py).
//
// Kernels: the transforms are elementwise (one thread per (channel, tile) or (k, c) pair, grid-stride);
// the GEMMs are conv_igemm_kernel (shared-memory tiles, 4x4 register blocks) over a WinogradGemm problem
// whose blockIdx.z enumerates (xi, group) pairs. Every workspace layout puts the GEMM's m (for A) or n
// (for B) index innermost, so the consecutive threads that stage a tile column read consecutive
// addresses, and each transform kernel maps consecutive threads onto that innermost index so its
// writes are coalesced too. Workspace sizes: conv_winograd_workspace (kernels.h).
#pragma once
#include "common/winograd_matrices.h"
#include "cuda/conv_igemm.cuh"

namespace pyconv {
namespace kern {

// Coefficients as functions of constant indices: after unrolling, every call folds to an immediate
// and madd_const drops the multiplications by 0 and +-1.
template <int M>
struct WinogradMatrices;

// The constexpr array lives inside the function: device code can read it there (a static member
// array is host memory).
#define PYCONV_WINOGRAD_MATRIX(M, X, ROWS, COLS)                   \
  struct X {                                                       \
    static PYCONV_HD double at(int i, int j) {                     \
      constexpr double v[ROWS][COLS] = PYCONV_WINOGRAD_F##M##_##X; \
      return v[i][j];                                              \
    }                                                              \
  };
#define PYCONV_WINOGRAD_MATRICES(M)             \
  template <>                                   \
  struct WinogradMatrices<M> {                  \
    PYCONV_WINOGRAD_MATRIX(M, BT, M + 2, M + 2) \
    PYCONV_WINOGRAD_MATRIX(M, G, M + 2, 3)      \
    PYCONV_WINOGRAD_MATRIX(M, AT, M, M + 2)     \
  };
PYCONV_WINOGRAD_MATRICES(2)
PYCONV_WINOGRAD_MATRICES(4)
#undef PYCONV_WINOGRAD_MATRICES
#undef PYCONV_WINOGRAD_MATRIX

template <typename X>
struct Transposed {
  static PYCONV_HD double at(int i, int j) { return X::at(j, i); }
};

template <typename T>
PYCONV_HD T madd_const(T acc, double c, T v) {
  if (c == 0.0) return acc;
  if (c == 1.0) return acc + v;
  if (c == -1.0) return acc - v;
  return acc + T(c) * v;
}

// out[I][J] = X[I][K] in[K][J]
template <int I, int K, int J, typename X, typename T>
PYCONV_HD void left_mul(const T* in, T* out) {
  PYCONV_UNROLL
  for (int i = 0; i < I; ++i)
    PYCONV_UNROLL
    for (int j = 0; j < J; ++j) {
      T acc = T(0);
      PYCONV_UNROLL
      for (int k = 0; k < K; ++k) acc = madd_const(acc, X::at(i, k), in[k * J + j]);
      out[i * J + j] = acc;
    }
}

// out[I][J] = in[I][K] X[K][J]
template <int I, int K, int J, typename X, typename T>
PYCONV_HD void right_mul(const T* in, T* out) {
  PYCONV_UNROLL
  for (int i = 0; i < I; ++i)
    PYCONV_UNROLL
    for (int j = 0; j < J; ++j) {
      T acc = T(0);
      PYCONV_UNROLL
      for (int k = 0; k < K; ++k) acc = madd_const(acc, X::at(k, j), in[i * K + k]);
      out[i * J + j] = acc;
    }
}

struct WinogradTiles {
  int64_t th, tw, tiles;
  int m;
  PYCONV_HD WinogradTiles(const WinogradConv& c, int m_) : th((c.P + m_ - 1) / m_), tw((c.Q + m_ - 1) / m_),
                                                          tiles(c.N * th * tw), m(m_) {}
  PYCONV_HD int64_t n(int64_t t) const { return t / (th * tw); }
  PYCONV_HD int64_t p0(int64_t t) const { return (t / tw) % th * m; }
  PYCONV_HD int64_t q0(int64_t t) const { return t % tw * m; }
};

// U[xi][g*Cin+c][k] = G f G^T (i = (g*Cin + c)*Kout + k); `transposed`: f = grad-input's filter
// w[g*Cin+c][k] rotated 180 degrees, else f = w[g*Kout+k][c].
template <typename T, int M>
PYCONV_GLOBAL void winograd_filter_kernel(WinogradConv c, const T* w, bool transposed, T* U) {
  using Mx = WinogradMatrices<M>;
  constexpr int A = M + 2;
  const int64_t total = c.G * c.Cin * c.Kout;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t k = i % c.Kout, gc = i / c.Kout, g = gc / c.Cin, ci = gc % c.Cin;
    T f[9], tmp[A * 3], u[A * A];
    PYCONV_UNROLL
    for (int rs = 0; rs < 9; ++rs)
      f[rs] = transposed ? w[i * 9 + (8 - rs)] : w[((g * c.Kout + k) * c.Cin + ci) * 9 + rs];
    left_mul<A, 3, 3, typename Mx::G>(f, tmp);
    right_mul<A, 3, A, Transposed<typename Mx::G>>(tmp, u);
    PYCONV_UNROLL
    for (int xi = 0; xi < A * A; ++xi) U[xi * total + i] = u[xi];
  }
}

// B^T d B over every input channel c (all groups) and tile t, into V[xi][c][t] (forward: the GEMM's
// B[c][t]) or, kTileMajor, V[xi][t][c] (grad-weight: B[t][c]).
template <typename T, int M, bool kTileMajor>
PYCONV_GLOBAL void winograd_input_kernel(WinogradConv c, const T* x, T* V) {
  using Mx = WinogradMatrices<M>;
  constexpr int A = M + 2;
  const WinogradTiles tl(c, M);
  const int64_t Ctot = c.G * c.Cin, total = Ctot * tl.tiles;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t t = kTileMajor ? i / Ctot : i % tl.tiles, ch = kTileMajor ? i % Ctot : i / tl.tiles;
    const int64_t h0 = tl.p0(t) - c.pad_h, v0 = tl.q0(t) - c.pad_w;
    const T* xc = x + (tl.n(t) * Ctot + ch) * c.H * c.W;
    T d[A * A], tmp[A * A], v[A * A];
    PYCONV_UNROLL
    for (int a = 0; a < A; ++a)
      PYCONV_UNROLL
      for (int b = 0; b < A; ++b) {
        const int64_t h = h0 + a, u = v0 + b;
        d[a * A + b] = (h >= 0 && h < c.H && u >= 0 && u < c.W) ? xc[h * c.W + u] : T(0);
      }
    left_mul<A, A, A, typename Mx::BT>(d, tmp);
    right_mul<A, A, A, Transposed<typename Mx::BT>>(tmp, v);
    PYCONV_UNROLL
    for (int xi = 0; xi < A * A; ++xi) V[xi * total + i] = v[xi];
  }
}

// y[n, k, tile] = A^T M A + b[k], clipped at the P x Q edge.
template <typename T, int M>
PYCONV_GLOBAL void winograd_output_kernel(WinogradConv c, const T* Mw, const T* bias, T* y) {
  using Mx = WinogradMatrices<M>;
  constexpr int A = M + 2;
  const WinogradTiles tl(c, M);
  const int64_t Ktot = c.G * c.Kout, total = Ktot * tl.tiles;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t t = i % tl.tiles, kg = i / tl.tiles;
    T mv[A * A], tmp[M * A], o[M * M];
    PYCONV_UNROLL
    for (int xi = 0; xi < A * A; ++xi) mv[xi] = Mw[(xi * Ktot + kg) * tl.tiles + t];
    left_mul<M, A, A, typename Mx::AT>(mv, tmp);
    right_mul<M, A, M, Transposed<typename Mx::AT>>(tmp, o);
    const T bk = bias ? bias[kg] : T(0);
    const int64_t p0 = tl.p0(t), q0 = tl.q0(t);
    T* yk = y + (tl.n(t) * Ktot + kg) * c.P * c.Q;
    PYCONV_UNROLL
    for (int a = 0; a < M; ++a)
      PYCONV_UNROLL
      for (int b = 0; b < M; ++b)
        if (p0 + a < c.P && q0 + b < c.Q) yk[(p0 + a) * c.Q + q0 + b] = o[a * M + b] + bk;
  }
}

// Z[xi][t][k] = A dY A^T (dY zero outside P x Q), i = t*Ktot + k.
template <typename T, int M>
PYCONV_GLOBAL void winograd_grad_output_kernel(WinogradConv c, const T* gy, T* Z) {
  using Mx = WinogradMatrices<M>;
  constexpr int A = M + 2;
  const WinogradTiles tl(c, M);
  const int64_t Ktot = c.G * c.Kout, total = Ktot * tl.tiles;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const int64_t kg = i % Ktot, t = i / Ktot;
    const int64_t p0 = tl.p0(t), q0 = tl.q0(t);
    const T* gk = gy + (tl.n(t) * Ktot + kg) * c.P * c.Q;
    T d[M * M], tmp[A * M], z[A * A];
    PYCONV_UNROLL
    for (int a = 0; a < M; ++a)
      PYCONV_UNROLL
      for (int b = 0; b < M; ++b)
        d[a * M + b] = (p0 + a < c.P && q0 + b < c.Q) ? gk[(p0 + a) * c.Q + q0 + b] : T(0);
    left_mul<A, M, M, Transposed<typename Mx::AT>>(d, tmp);
    right_mul<A, M, A, typename Mx::AT>(tmp, z);
    PYCONV_UNROLL
    for (int xi = 0; xi < A * A; ++xi) Z[xi * total + i] = z[xi];
  }
}

// gw[g*Kout+k][c] = G^T (sum_{j<splits} part[j][.][g*Kout+k][c]) G, splits summed in order.
template <typename T, int M>
PYCONV_GLOBAL void winograd_filter_grad_kernel(WinogradConv c, const T* part, int64_t splits, T* gw) {
  using Mx = WinogradMatrices<M>;
  constexpr int A = M + 2;
  const int64_t Ktot = c.G * c.Kout, total = Ktot * c.Cin, stride = A * A * total;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    T du[A * A], tmp[3 * A], f[9];
    PYCONV_UNROLL
    for (int xi = 0; xi < A * A; ++xi) {
      const T* p = part + xi * total + i;  // [xi][kg][c] with i = kg*Cin + c
      T acc = p[0];
      for (int64_t j = 1; j < splits; ++j) acc += p[j * stride];
      du[xi] = acc;
    }
    left_mul<3, A, A, Transposed<typename Mx::G>>(du, tmp);
    right_mul<3, A, 3, typename Mx::G>(tmp, f);
    PYCONV_UNROLL
    for (int rs = 0; rs < 9; ++rs) gw[i * 9 + rs] = f[rs];
  }
}

// The alpha^2 * G GEMMs, batch z = xi*G + g (conv_igemm_kernel's "group" index), as strided operands:
//   A[m][k] = a.p[xi*a.xi + g*a.g + m + k*a.k],   B[k][n] = b.p[xi*b.xi + g*b.g + n + k*b.k]
//   C[m][n] -> c[split*batches*Mg*Ng + (z*Mg + m)*Ng + n]
// (unit stride along m and n: the threads staging one tile row read consecutive addresses).
template <typename T>
struct WinogradOperand {
  const T* p;
  int64_t xi, g, k;  // strides of the position, the group and the reduction index
};

template <typename T>
struct WinogradGemm {
  WinogradOperand<T> a, b;
  T* c;
  int64_t G, batches, Mg, Ng, Kr;
  struct Ctx {
    const T* base;
    int64_t k;
  };
  using ACtx = Ctx;
  using BCtx = Ctx;
  PYCONV_HD int64_t M() const { return Mg; }
  PYCONV_HD int64_t N() const { return Ng; }
  PYCONV_HD int64_t K() const { return Kr; }
  PYCONV_HD static Ctx ctx(const WinogradOperand<T>& o, int64_t G, int64_t z, int64_t row) {
    return {o.p + (z / G) * o.xi + (z % G) * o.g + row, o.k};
  }
  PYCONV_HD ACtx a_ctx(int64_t z, int64_t m) const { return ctx(a, G, z, m); }
  PYCONV_HD T a_at(const ACtx& x, int64_t k) const { return x.base[k * x.k]; }
  PYCONV_HD BCtx b_ctx(int64_t z, int64_t n) const { return ctx(b, G, z, n); }
  PYCONV_HD T b_at(const BCtx& x, int64_t k) const { return x.base[k * x.k]; }
  PYCONV_HD void store(int64_t z, int64_t split, int64_t m, int64_t n, T v) const {
    c[split * batches * Mg * Ng + (z * Mg + m) * Ng + n] = v;
  }
};

template <typename T, int M>
void winograd_conv_run(const WinogradConv& c, const T* x, const T* w, bool transposed, const T* bias, T* y,
                       T* ws, stream_t st, const char* name) {
  constexpr int A = M + 2;
  const WinogradTiles tl(c, M);
  const int64_t Ktot = c.G * c.Kout, Ctot = c.G * c.Cin;
  if (tl.tiles == 0 || Ktot == 0) return;
  if (!ws) fail(name, ": the Winograd workspace is missing");
  T* U = ws;  // [xi][G*Cin][Kout]
  T* V = U + A * A * Ktot * c.Cin;  // [xi][G*Cin][tiles]
  T* Mw = V + A * A * Ctot * tl.tiles;  // [xi][G*Kout][tiles]
  const Dim3 block{kElementwiseThreads, 1, 1};
  launch(&winograd_filter_kernel<T, M>, {elementwise_blocks(Ktot * c.Cin), 1, 1}, block, st, name, c, w, transposed,
         U);
  launch(&winograd_input_kernel<T, M, false>, {elementwise_blocks(Ctot * tl.tiles), 1, 1}, block, st, name, c, x,
         V);
  const WinogradGemm<T> pr{{U, Ctot * c.Kout, c.Cin * c.Kout, c.Kout},
                           {V, Ctot * tl.tiles, c.Cin * tl.tiles, tl.tiles},
                           Mw, c.G, A * A * c.G, c.Kout, tl.tiles, c.Cin};
  igemm_run<T>(pr, A * A * c.G, 1, c.Cin, st, name);  // Cin = 0: the GEMM writes zeros, y = bias
  launch(&winograd_output_kernel<T, M>, {elementwise_blocks(Ktot * tl.tiles), 1, 1}, block, st, name, c, Mw, bias,
         y);
}

template <typename T, int M>
void winograd_wgrad_run(const WinogradConv& c, const T* x, const T* gy, T* gw, T* ws, stream_t st) {
  constexpr int A = M + 2;
  const char* name = "conv_winograd_wgrad";
  const WinogradTiles tl(c, M);
  const int64_t Ktot = c.G * c.Kout, Ctot = c.G * c.Cin;
  if (Ktot * c.Cin == 0) return;
  if (!ws) fail(name, ": the Winograd workspace is missing");
  const int64_t splits = conv_winograd_wgrad_splits(c, M);
  T* V = ws;                            // [xi][tiles][G*Cin]
  T* Z = V + A * A * Ctot * tl.tiles;   // [xi][tiles][G*Kout]
  T* part = Z + A * A * Ktot * tl.tiles;  // [splits][xi][G*Kout][Cin]
  const Dim3 block{kElementwiseThreads, 1, 1};
  launch(&winograd_input_kernel<T, M, true>, {elementwise_blocks(Ctot * tl.tiles), 1, 1}, block, st, name, c, x,
         V);
  launch(&winograd_grad_output_kernel<T, M>, {elementwise_blocks(Ktot * tl.tiles), 1, 1}, block, st, name, c, gy,
         Z);
  // No tiles (empty batch): the GEMM's empty slabs still write zero partials, so gw = 0.
  const WinogradGemm<T> pr{{Z, tl.tiles * Ktot, c.Kout, Ktot}, {V, tl.tiles * Ctot, c.Cin, Ctot}, part, c.G,
                           A * A * c.G, c.Kout, c.Cin, tl.tiles};
  const int64_t slab = ceil_div(ceil_div(tl.tiles, splits), kIgemmBK) * kIgemmBK;
  igemm_run<T>(pr, A * A * c.G, splits, slab < kIgemmBK ? kIgemmBK : slab, st, name);
  launch(&winograd_filter_grad_kernel<T, M>, {elementwise_blocks(Ktot * c.Cin), 1, 1}, block, st, name, c, part,
         splits, gw);
}

template <typename T>
void conv_winograd_fprop(const ConvShape& s, int m, const T* x, const T* w, const T* b, T* y, T* ws, stream_t st) {
  const WinogradConv c = winograd_forward_conv(s);
  if (m == 2) winograd_conv_run<T, 2>(c, x, w, false, b, y, ws, st, "conv_winograd_fprop");
  else winograd_conv_run<T, 4>(c, x, w, false, b, y, ws, st, "conv_winograd_fprop");
}

template <typename T>
void conv_winograd_dgrad(const ConvShape& s, int m, const T* gy, const T* w, T* gx, T* ws, stream_t st) {
  const WinogradConv c = winograd_backward_input_conv(s);
  if (m == 2) winograd_conv_run<T, 2>(c, gy, w, true, nullptr, gx, ws, st, "conv_winograd_dgrad");
  else winograd_conv_run<T, 4>(c, gy, w, true, nullptr, gx, ws, st, "conv_winograd_dgrad");
}

template <typename T>
void conv_winograd_wgrad(const ConvShape& s, int m, const T* x, const T* gy, T* gw, T* gb, T* ws, stream_t st) {
  if (gw) {
    const WinogradConv c = winograd_forward_conv(s);
    if (m == 2) winograd_wgrad_run<T, 2>(c, x, gy, gw, ws, st);
    else winograd_wgrad_run<T, 4>(c, x, gy, gw, ws, st);
  }
  if (gb) conv_bias_grad(s, gy, gb, st);
}

}  // namespace kern
}  // namespace pyconv
