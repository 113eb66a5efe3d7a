// Implicit-GEMM convolution: every pass is one GEMM per group, C[m][n] = sum_k A[m][k] * B[k][n],
// whose operands are read straight from the tensors (the im2col matrix is never materialized):
//
//   fprop  M=Kg  N=N*P*Q  K=Cg*R*S   A[k][c,r,s] = w[g*Kg+k,c,r,s]
//                                    B[c,r,s][n,p,q] = x[n, g*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw] (0 outside)
//                                    y[n, g*Kg+m, p, q] = C[m][n,p,q] + b
//   dgrad  M=Cg  N=N*H*W  K=Kg*R*S   A[c][k,r,s] = w[g*Kg+k,c,r,s]
//                                    B[k,r,s][n,h,v] = gy[n, g*Kg+k, (h+ph-r*dh)/sh, (v+pw-s*dw)/sw]
//                                                      (0 unless both divisions are exact and in range)
//   wgrad  M=Kg  N=Cg*R*S  K=N*P*Q   A[k][n,p,q] = gy[n, g*Kg+k, p, q];  B[n,p,q][c,r,s] = fprop's B^T
//          split-K: blockIdx.z = g*splits + split; split j sums its slab of K into ws[j], and a second
//          kernel adds the slabs in order j = 0..splits-1 (deterministic, no atomics).
//
// Kernel: a 256-thread block computes a BM x BN tile of C; per BK slab it stages A (BK x BM) and
// B (BK x BN) tiles in shared memory (zero-filled past the edges), then each thread accumulates a
// TM x TN register block with outer products of TM values of A and TN values of B per k.
//
// fprop with stats (conv-BN fusion): the epilogue also reduces the tile it stores per output channel,
// in float64, over the tile's valid columns (n < N*P*Q), into partials[0|1][blockIdx.x][g*Kg+m]
// (sum y, sum y^2); conv_stats_sum_kernel then adds the blockIdx.x parts in order (deterministic).
#pragma once
#include <type_traits>

#include "cuda/conv_direct.cuh"

namespace pyconv {
namespace kern {

constexpr int kIgemmTM = 4, kIgemmTN = 4;
constexpr int kIgemmThreads = (kIgemmBM / kIgemmTM) * (kIgemmBN / kIgemmTN);
static_assert(kIgemmThreads == 256, "one thread per TM x TN block of the tile");

// Each problem exposes its operands through per-thread contexts: a thread always stages the same
// tile row mm of A and column nn of B (see the kernel), so everything that depends on m or n alone
// (the n,p,q or c,r,s decomposition, base pointers) is computed once per block instead of once per
// element and slab; only the reduction index k is decoded in the loop.
//   a_ctx(g, m) -> ACtx,  a_at(ACtx, k) = A[m][k];   b_ctx(g, n) -> BCtx,  b_at(BCtx, k) = B[k][n]
//   store(g, split, m, n, value) writes C[m][n].

template <typename T>
struct FpropProblem {
  ConvShape s;
  const T *x, *w, *b;
  T* y;
  struct ACtx {
    const T* row;  // w[g*Kg+m][.]
  };
  struct BCtx {
    const T* img;  // x[n][g*Cg][.][.]
    int64_t h0, v0;
  };
  PYCONV_HD int64_t M() const { return s.K / s.G; }
  PYCONV_HD int64_t N() const { return s.N * s.P * s.Q; }
  PYCONV_HD int64_t K() const { return (s.C / s.G) * s.R * s.S; }
  PYCONV_HD ACtx a_ctx(int64_t g, int64_t m) const { return {w + (g * M() + m) * K()}; }
  PYCONV_HD T a_at(const ACtx& a, int64_t k) const { return a.row[k]; }
  PYCONV_HD BCtx b_ctx(int64_t g, int64_t n) const {
    const int64_t q = n % s.Q, p = (n / s.Q) % s.P, nn = n / (s.Q * s.P);
    return {x + (nn * s.C + g * (s.C / s.G)) * s.H * s.W, p * s.stride_h - s.pad_h, q * s.stride_w - s.pad_w};
  }
  PYCONV_HD T b_at(const BCtx& b_, int64_t k) const {
    const int64_t t = k % s.S, r = (k / s.S) % s.R, c = k / (s.S * s.R);
    const int64_t h = b_.h0 + r * s.dil_h, v = b_.v0 + t * s.dil_w;
    if (h < 0 || h >= s.H || v < 0 || v >= s.W) return T(0);
    return b_.img[(c * s.H + h) * s.W + v];
  }
  PYCONV_HD T store(int64_t g, int64_t, int64_t m, int64_t n, T v) const {  // returns the value written
    const int64_t PQ = s.P * s.Q, ko = g * M() + m;
    const T out = v + (b ? b[ko] : T(0));
    y[((n / PQ) * s.K + ko) * PQ + n % PQ] = out;
    return out;
  }
};

template <typename T>
struct DgradProblem {
  ConvShape s;
  const T *gy, *w;
  T* gx;
  struct ACtx {
    const T* filt;  // w[g*Kg][c][.][.]
  };
  struct BCtx {
    const T* img;  // gy[n][g*Kg][.][.]
    int64_t hp, vp;  // h + pad_h, v + pad_w
  };
  PYCONV_HD int64_t M() const { return s.C / s.G; }
  PYCONV_HD int64_t N() const { return s.N * s.H * s.W; }
  PYCONV_HD int64_t K() const { return (s.K / s.G) * s.R * s.S; }
  PYCONV_HD ACtx a_ctx(int64_t g, int64_t m) const { return {w + (g * (s.K / s.G) * M() + m) * s.R * s.S}; }
  PYCONV_HD T a_at(const ACtx& a, int64_t k) const {
    const int64_t RS = s.R * s.S;
    return a.filt[(k / RS) * M() * RS + k % RS];
  }
  PYCONV_HD BCtx b_ctx(int64_t g, int64_t n) const {
    const int64_t v = n % s.W, h = (n / s.W) % s.H, nn = n / (s.W * s.H);
    return {gy + (nn * s.K + g * (s.K / s.G)) * s.P * s.Q, h + s.pad_h, v + s.pad_w};
  }
  PYCONV_HD T b_at(const BCtx& b_, int64_t k) const {
    const int64_t t = k % s.S, r = (k / s.S) % s.R, kl = k / (s.S * s.R);
    const int64_t ph = b_.hp - r * s.dil_h, qw = b_.vp - t * s.dil_w;
    if (ph < 0 || qw < 0 || ph % s.stride_h || qw % s.stride_w) return T(0);
    const int64_t p = ph / s.stride_h, q = qw / s.stride_w;
    if (p >= s.P || q >= s.Q) return T(0);
    return b_.img[(kl * s.P + p) * s.Q + q];
  }
  PYCONV_HD void store(int64_t g, int64_t, int64_t m, int64_t n, T v) const {
    const int64_t HW = s.H * s.W;
    gx[((n / HW) * s.C + g * M() + m) * HW + n % HW] = v;
  }
};

template <typename T>
struct WgradProblem {
  ConvShape s;
  const T *x, *gy;
  T* out;  // gw when splits == 1, else the [splits][K][Cg*R*S] workspace
  struct ACtx {
    const T* plane;  // gy[0][g*Kg+m][.][.]
  };
  struct BCtx {
    const T* chan;  // x[0][g*Cg+c][.][.]
    int64_t hr, vs;  // r*dh - pad_h, s*dw - pad_w
  };
  PYCONV_HD int64_t M() const { return s.K / s.G; }
  PYCONV_HD int64_t N() const { return (s.C / s.G) * s.R * s.S; }
  PYCONV_HD int64_t K() const { return s.N * s.P * s.Q; }
  PYCONV_HD ACtx a_ctx(int64_t g, int64_t m) const { return {gy + (g * M() + m) * s.P * s.Q}; }
  PYCONV_HD T a_at(const ACtx& a, int64_t k) const {
    const int64_t PQ = s.P * s.Q;
    return a.plane[(k / PQ) * s.K * PQ + k % PQ];
  }
  PYCONV_HD BCtx b_ctx(int64_t g, int64_t n) const {
    const int64_t t = n % s.S, r = (n / s.S) % s.R, c = n / (s.S * s.R);
    return {x + (g * (s.C / s.G) + c) * s.H * s.W, r * s.dil_h - s.pad_h, t * s.dil_w - s.pad_w};
  }
  PYCONV_HD T b_at(const BCtx& b_, int64_t k) const {
    const int64_t q = k % s.Q, p = (k / s.Q) % s.P, nn = k / (s.Q * s.P);
    const int64_t h = p * s.stride_h + b_.hr, v = q * s.stride_w + b_.vs;
    if (h < 0 || h >= s.H || v < 0 || v >= s.W) return T(0);
    return b_.chan[nn * s.C * s.H * s.W + h * s.W + v];
  }
  PYCONV_HD void store(int64_t g, int64_t split, int64_t m, int64_t n, T v) const {
    out[(split * s.K + g * M() + m) * N() + n] = v;
  }
};

// fprop whose epilogue also writes per-channel partial sums: partials[2][gridDim.x][K].
template <typename T>
struct FpropStatsProblem : FpropProblem<T> {
  double* partials;
};

template <typename Problem>
struct IgemmStatsEpilogue : std::false_type {};
template <typename T>
struct IgemmStatsEpilogue<FpropStatsProblem<T>> : std::true_type {};

// Stores the tile like the plain epilogue, and reduces it per row m (channel): each thread sums its
// TN columns of each of its TM rows in float64, then the BN/TN threads of a row band fold their
// partials from shared memory in a fixed order. Rows past M and columns past N (partial tiles)
// contribute nothing.
template <typename T, int TM, int TN>
PYCONV_DEVICE void igemm_store_with_stats(const FpropStatsProblem<T>& pr, const T (&acc)[TM][TN], int64_t g,
                                          int64_t m0, int64_t n0, int tm, int tn) {
  constexpr int BM = kIgemmBM, COLS = kIgemmBN / TN;
  PYCONV_SHARED_ARRAY(double, red, 2 * BM * COLS);  // red[sum | sum of squares][row][column thread]
  const int64_t M = pr.M(), N = pr.N();
  PYCONV_UNROLL
  for (int i = 0; i < TM; ++i) {
    double sum = 0, sq = 0;
    PYCONV_UNROLL
    for (int j = 0; j < TN; ++j) {
      const int64_t m = m0 + tm + i, n = n0 + tn + j;
      if (m < M && n < N) {
        const double v = double(pr.store(g, 0, m, n, acc[i][j]));
        sum += v;
        sq += v * v;
      }
    }
    red[(tm + i) * COLS + tn / TN] = sum;
    red[(BM + tm + i) * COLS + tn / TN] = sq;
  }
  PYCONV_SYNC();
  const int t = int(thread_x());
  if (t < 2 * BM && m0 + t % BM < M) {
    const int which = t / BM, row = t % BM;
    double total = 0;
    for (int c = 0; c < COLS; ++c) total += red[(which * BM + row) * COLS + c];
    pr.partials[(which * int64_t(grid_dim_x()) + block_x()) * pr.s.K + g * M + m0 + row] = total;
  }
}

template <typename T, typename Problem>
PYCONV_GLOBAL void PYCONV_LAUNCH_BOUNDS(kIgemmThreads) conv_igemm_kernel(Problem pr, int64_t splits, int64_t slab) {
  constexpr int BM = kIgemmBM, BN = kIgemmBN, BK = kIgemmBK, TM = kIgemmTM, TN = kIgemmTN;
  PYCONV_SHARED_ARRAY(T, As, BK * BM);  // As[kk][mm]
  PYCONV_SHARED_ARRAY(T, Bs, BK * BN);  // Bs[kk][nn]
  const int tid = int(thread_x());
  const int64_t g = block_z() / splits, split = block_z() % splits;
  const int64_t m0 = int64_t(block_y()) * BM, n0 = int64_t(block_x()) * BN;
  const int64_t M = pr.M(), N = pr.N(), K = pr.K();
  const int64_t k_begin = split * slab, k_end = k_begin + slab < K ? k_begin + slab : K;
  const int tm = (tid / (BN / TN)) * TM, tn = (tid % (BN / TN)) * TN;

  T acc[TM][TN];  // registers: every index below is a compile-time constant after unrolling
  PYCONV_UNROLL
  for (int i = 0; i < TM; ++i)
    PYCONV_UNROLL
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  // Thread tid stages rows kk = tid/BM + j*(256/BM) of column tid%BM of each tile (and likewise
  // for B), so its column of A and of B is fixed for the whole block: contexts built once.
  static_assert(kIgemmThreads % BM == 0 && kIgemmThreads % BN == 0 && (BK * BM) % kIgemmThreads == 0 &&
                    (BK * BN) % kIgemmThreads == 0,
                "each thread stages a fixed tile column");
  const int a_mm = tid % BM, a_kk = tid / BM, b_nn = tid % BN, b_kk = tid / BN;
  const bool a_ok = m0 + a_mm < M, b_ok = n0 + b_nn < N;
  const typename Problem::ACtx actx = pr.a_ctx(g, a_ok ? m0 + a_mm : 0);
  const typename Problem::BCtx bctx = pr.b_ctx(g, b_ok ? n0 + b_nn : 0);

  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    PYCONV_UNROLL
    for (int kk = a_kk; kk < BK; kk += kIgemmThreads / BM) {
      const int64_t k = k0 + kk;
      As[kk * BM + a_mm] = (a_ok && k < k_end) ? pr.a_at(actx, k) : T(0);
    }
    PYCONV_UNROLL
    for (int kk = b_kk; kk < BK; kk += kIgemmThreads / BN) {
      const int64_t k = k0 + kk;
      Bs[kk * BN + b_nn] = (b_ok && k < k_end) ? pr.b_at(bctx, k) : T(0);
    }
    PYCONV_SYNC();
    PYCONV_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      T av[TM], bv[TN];
      PYCONV_UNROLL
      for (int i = 0; i < TM; ++i) av[i] = As[kk * BM + tm + i];
      PYCONV_UNROLL
      for (int j = 0; j < TN; ++j) bv[j] = Bs[kk * BN + tn + j];
      PYCONV_UNROLL
      for (int i = 0; i < TM; ++i)
        PYCONV_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
    }
    PYCONV_SYNC();  // the next slab overwrites the tiles
  }

  if constexpr (IgemmStatsEpilogue<Problem>::value) {
    igemm_store_with_stats<T>(pr, acc, g, m0, n0, tm, tn);
  } else {
    PYCONV_UNROLL
    for (int i = 0; i < TM; ++i)
      PYCONV_UNROLL
      for (int j = 0; j < TN; ++j) {
        const int64_t m = m0 + tm + i, n = n0 + tn + j;
        if (m < M && n < N) pr.store(g, split, m, n, acc[i][j]);
      }
  }
}

// gw[i] = sum_{j < splits} ws[j][i], in order j = 0, 1, ...
template <typename T>
PYCONV_GLOBAL void splitk_sum_kernel(const T* ws, T* out, int64_t count, int64_t splits) {
  for (int64_t i = global_thread_index(); i < count; i += global_thread_count()) {
    T acc = ws[i];
    for (int64_t j = 1; j < splits; ++j) acc += ws[j * count + i];
    out[i] = acc;
  }
}

template <typename T, typename Problem>
void igemm_run(const Problem& pr, int64_t groups, int64_t splits, int64_t slab, stream_t st, const char* name) {
  const Dim3 grid{grid_dim(ceil_div(pr.N(), kIgemmBN), 2147483647, name),
                  grid_dim(ceil_div(pr.M(), kIgemmBM), 65535, name), grid_dim(groups * splits, 65535, name)};
  if (pr.M() == 0 || pr.N() == 0) return;
  launch(&conv_igemm_kernel<T, Problem>, grid, {kIgemmThreads, 1, 1}, st, name, pr, splits, slab);
}

template <typename T>
void conv_igemm_fprop(const ConvShape& s, const T* x, const T* w, const T* b, T* y, stream_t st) {
  const FpropProblem<T> pr{s, x, w, b, y};
  igemm_run<T>(pr, s.G, 1, pr.K(), st, "conv_igemm_fprop");
}

template <typename T>
void conv_igemm_fprop_stats(const ConvShape& s, const T* x, const T* w, const T* b, T* y, double* stats,
                            double* ws, stream_t st) {
  const FpropStatsProblem<T> pr{{s, x, w, b, y}, ws};
  igemm_run<T>(pr, s.G, 1, pr.K(), st, "conv_igemm_fprop_stats");
  // No outputs (N*P*Q == 0): no tile ran, and zero parts sum to zero.
  conv_stats_sum(s, ws, stats, pr.N() > 0 ? conv_igemm_stats_parts(s) : 0, st);
}

template <typename T>
void conv_igemm_dgrad(const ConvShape& s, const T* gy, const T* w, T* gx, stream_t st) {
  const DgradProblem<T> pr{s, gy, w, gx};
  igemm_run<T>(pr, s.G, 1, pr.K(), st, "conv_igemm_dgrad");
}

template <typename T>
void conv_igemm_wgrad(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb, T* ws, stream_t st) {
  if (gw) {
    const int64_t splits = conv_igemm_wgrad_splits(s);
    const WgradProblem<T> pr{s, x, gy, splits > 1 ? ws : gw};
    if (splits > 1 && !ws) fail("conv_igemm_wgrad: the split-K workspace is missing");
    const int64_t slab = ceil_div(ceil_div(pr.K(), splits), kIgemmBK) * kIgemmBK;
    igemm_run<T>(pr, s.G, splits, slab, st, "conv_igemm_wgrad");
    if (splits > 1) {
      const int64_t count = s.K * pr.N();
      launch(&splitk_sum_kernel<T>, {elementwise_blocks(count), 1, 1}, {kElementwiseThreads, 1, 1}, st,
             "conv_igemm_wgrad_splitk_sum", ws, gw, count, splits);
    }
  }
  if (gb) conv_bias_grad(s, gy, gb, st);
}

}  // namespace kern
}  // namespace pyconv
