// Convolution as matrix multiplication (im2col + GEMM), NCHW, per group g (Cg = C/G, Kg = K/G):
//
//   col[(c,r,s), (n,p,q)] = x[n, gCg+c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)
//   forward      Y_g[Kg, N*P*Q]   = W_g[Kg, Cg*R*S] . col[Cg*R*S, N*P*Q] + b        (then Y is NKPQ)
//   grad-input   dcol[Cg*R*S, NPQ] = W_g^T . dY_g[Kg, NPQ],  gx = col2im(dcol) (scatter-add)
//   grad-weight  dW_g[Kg, Cg*R*S]  = dY_g[Kg, NPQ] . col^T[NPQ, Cg*R*S]
//   grad-bias    db[k] = sum_{n,p,q} dY[n,k,p,q]
//
// The column matrix is never built: the GEMM's B packer (cpu/gemm_driver.h) gathers each KC x NR
// panel of col (forward) or col^T (grad-weight) straight from x, so the only scratch is the GEMM's
// panels. A stride-1 grad-input is the forward convolution of gy with the flipped, transposed filter;
// only a strided grad-input materializes dcol, a few images at a time (bounded workspace). A 1x1,
// stride-1, unpadded convolution needs no im2col at all: col is x itself (and dcol is gx).
#include "cpu/conv_im2col.h"

#include "cpu/gemm_driver.h"

namespace pyconv {
namespace PYCONV_ISA {
namespace {

bool is_pointwise(const ConvShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 &&
         s.P == s.H && s.Q == s.W;
}

// Valid range [lo, hi) of t in [0, len) with 0 <= i0 + t*st < extent.
PYCONV_INLINE void valid_range(int64_t i0, int64_t st, int64_t extent, int64_t len, int64_t& lo, int64_t& hi) {
  if (st == 1) {  // the packers call this per panel row: no integer division on the common path
    lo = imin(len, imax(0, -i0));
    hi = imax(lo, imin(len, extent - i0));
    return;
  }
  lo = i0 >= 0 ? 0 : imin(len, ceil_div(-i0, st));
  hi = i0 < extent ? imin(len, (extent - 1 - i0) / st + 1) : 0;
  if (hi < lo) hi = lo;
}

// dst[t*ds] = row[iw + t*sw] for t in [0, len), 0 where the column falls in the padding.
template <typename T>
PYCONV_INLINE void gather_row(const T* row, int64_t iw, int64_t sw, int64_t W, int64_t len, T* dst, int64_t ds) {
  int64_t lo, hi;
  valid_range(iw, sw, W, len, lo, hi);
  for (int64_t t = 0; t < lo; ++t) dst[t * ds] = T(0);
  const T* src = row + iw;
  if (sw == 1)
    for (int64_t t = lo; t < hi; ++t) dst[t * ds] = src[t];
  else
    for (int64_t t = lo; t < hi; ++t) dst[t * ds] = src[t * sw];
  for (int64_t t = hi; t < len; ++t) dst[t * ds] = T(0);
}

// B = col[Cg*R*S, N*P*Q] of one group (x points at the group's first channel of image 0).
template <typename T>
struct Im2colPackB {
  const ConvShape& s;
  const T* x;
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    const int64_t PQ = s.P * s.Q, HW = s.H * s.W, img = s.C * HW;
    // The panel's pixels as runs along one output row.
    struct Run {
      int64_t jj, len, ih0, iw0;
      const T* img;
    } runs[NR];
    int nruns = 0;
    for (int64_t j = j0; j < j0 + nr;) {
      const int64_t n = j / PQ, pq = j % PQ, p = pq / s.Q, q = pq % s.Q;
      const int64_t len = imin(s.Q - q, j0 + nr - j);
      runs[nruns++] = {j - j0, len, p * s.stride_h - s.pad_h, q * s.stride_w - s.pad_w, x + n * img};
      j += len;
    }
    int64_t c = k0 / (s.R * s.S), r = (k0 / s.S) % s.R, sc = k0 % s.S;
    for (int64_t k = 0; k < kc; ++k) {
      T* d = dst + k * NR;
      for (int i = 0; i < nruns; ++i) {
        const Run& u = runs[i];
        const int64_t ih = u.ih0 + r * s.dil_h;
        if (ih < 0 || ih >= s.H) {
          for (int64_t t = 0; t < u.len; ++t) d[u.jj + t] = T(0);
          continue;
        }
        gather_row(u.img + c * HW + ih * s.W, u.iw0 + sc * s.dil_w, s.stride_w, s.W, u.len, d + u.jj, 1);
      }
      for (int64_t jj = nr; jj < NR; ++jj) d[jj] = T(0);
      if (++sc == s.S) {
        sc = 0;
        if (++r == s.R) r = 0, ++c;
      }
    }
  }
};

// B = col^T[N*P*Q, Cg*R*S] of one group: rows are pixels, columns filter taps.
template <typename T>
struct Im2colTransposedPackB {
  const ConvShape& s;
  const T* x;
  void operator()(int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) const {
    constexpr int NR = GemmBlocking<T>::NR;
    const int64_t PQ = s.P * s.Q, HW = s.H * s.W, img = s.C * HW;
    int64_t coff[NR], roff[NR], soff[NR];
    for (int64_t jj = 0; jj < nr; ++jj) {
      const int64_t crs = j0 + jj;
      coff[jj] = (crs / (s.R * s.S)) * HW;
      roff[jj] = ((crs / s.S) % s.R) * s.dil_h;
      soff[jj] = (crs % s.S) * s.dil_w;
    }
    if (nr < NR)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t jj = nr; jj < NR; ++jj) dst[k * NR + jj] = T(0);
    for (int64_t pix = k0; pix < k0 + kc;) {
      const int64_t n = pix / PQ, pq = pix % PQ, p = pq / s.Q, q = pq % s.Q;
      const int64_t len = imin(s.Q - q, k0 + kc - pix);
      const int64_t ih0 = p * s.stride_h - s.pad_h, iw0 = q * s.stride_w - s.pad_w;
      const T* xn = x + n * img;
      T* d = dst + (pix - k0) * NR;
      for (int64_t jj = 0; jj < nr; ++jj) {
        const int64_t ih = ih0 + roff[jj];
        if (ih < 0 || ih >= s.H) {
          for (int64_t t = 0; t < len; ++t) d[t * NR + jj] = T(0);
          continue;
        }
        gather_row(xn + coff[jj] + ih * s.W, iw0 + soff[jj], s.stride_w, s.W, len, d + jj, int64_t(NR));
      }
      pix += len;
    }
  }
};

// A stride-1 grad-input is itself a convolution: gx = conv(gy, W'), with W'[c][k][r][s] =
// W[k][c][R-1-r][S-1-s] per group, the same dilation and top/left padding dil*(R-1) - pad (negative
// crops). So it runs on the forward path's implicit im2col, with no column buffer and no col2im.
bool grad_input_is_forward_conv(const ConvShape& s) { return s.stride_h == 1 && s.stride_w == 1; }

ConvShape grad_input_as_forward(const ConvShape& s) {
  ConvShape t = s;
  t.C = s.K, t.H = s.P, t.W = s.Q;
  t.K = s.C, t.P = s.H, t.Q = s.W;
  t.pad_h = s.dil_h * (s.R - 1) - s.pad_h;
  t.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
  return t;
}

// A = W'_g[Cg, Kg*R*S] of group g (w points at the group's first filter): element (c, (k, rs)) is
// w[(k*Cg + c)*RS + RS-1-rs].
template <typename T>
struct FlippedTransposedPackA {
  const T* w;
  int64_t Cg, RS;
  void operator()(int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) const {
    constexpr int MR = GemmBlocking<T>::MR;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const int64_t k = (k0 + kk) / RS, rs = (k0 + kk) % RS;
      const T* src = w + k * Cg * RS + (RS - 1 - rs);
      T* d = dst + kk * MR;
      for (int64_t i = 0; i < mr; ++i) d[i] = src[(i0 + i) * RS];
      for (int64_t i = mr; i < MR; ++i) d[i] = T(0);
    }
  }
};

// Images per grad-input chunk: dcol of one chunk stays under ~16 MiB (at least one image).
template <typename T>
int64_t dgrad_chunk_images(const ConvShape& s) {
  const int64_t per_image = imax(1, s.Cg() * s.R * s.S * s.P * s.Q * int64_t(sizeof(T)));
  return imax(1, imin(s.N, (int64_t(16) << 20) / per_image));
}

// gx[n0+nl, g*Cg + c] = sum_{r,s} scatter of dcol rows (c,r,s), for the images of one chunk.
template <typename T>
void col2im(const ConvShape& s, int64_t g, int64_t n0, int64_t nb, const T* dcol, int64_t ldcol, T* gx) {
  const int64_t Cg = s.Cg(), HW = s.H * s.W, PQ = s.P * s.Q;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t item = 0; item < nb * Cg; ++item) {
    const int64_t nl = item / Cg, c = item % Cg;
    T* plane = gx + ((n0 + nl) * s.C + g * Cg + c) * HW;
    for (int64_t i = 0; i < HW; ++i) plane[i] = T(0);
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t sc = 0; sc < s.S; ++sc) {
        const T* crow = dcol + ((c * s.R + r) * s.S + sc) * ldcol + nl * PQ;
        const int64_t iw0 = sc * s.dil_w - s.pad_w;
        int64_t lo, hi;
        valid_range(iw0, s.stride_w, s.W, s.Q, lo, hi);
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
          if (ih < 0 || ih >= s.H) continue;
          T* prow = plane + ih * s.W + iw0;
          const T* src = crow + p * s.Q;
          for (int64_t q = lo; q < hi; ++q) prow[q * s.stride_w] += src[q];
        }
      }
  }
}

}  // namespace

template <typename T>
void conv_im2col_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (s.N == 0 || s.K == 0 || PQ == 0) return;
  for (int64_t g = 0; g < s.G; ++g) {
    const StridedPackA<T> pa{w + g * Kg * CRS, CRS, 1};
    const MatrixOut<T, BatchedOutColumns> out{y + g * Kg * PQ, PQ, BatchedOutColumns{s.K * PQ, PQ}, T(1), T(0),
                                              b ? b + g * Kg : nullptr};
    if (is_pointwise(s)) {
      const BatchedPackB<T> pb{BatchedColumns<T>{x + g * Cg * HW, s.C * HW, HW, HW}};
      gemm_run<T>(Kg, s.N * PQ, CRS, pa, pb, out);
    } else {
      const Im2colPackB<T> pb{s, x + g * Cg * HW};
      gemm_run<T>(Kg, s.N * PQ, CRS, pa, pb, out);
    }
  }
}

template <typename T>
void conv_im2col_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (s.N == 0 || s.C == 0 || HW == 0) return;
  if (is_pointwise(s)) {
    // dcol is gx itself: gx_g[Cg, N*HW] = W_g^T . dY_g.
    for (int64_t g = 0; g < s.G; ++g) {
      const StridedPackA<T> pa{w + g * Kg * CRS, 1, CRS};
      const BatchedPackB<T> pb{BatchedColumns<T>{gy + g * Kg * PQ, s.K * PQ, PQ, PQ}};
      const MatrixOut<T, BatchedOutColumns> out{gx + g * Cg * HW, HW, BatchedOutColumns{s.C * HW, HW}, T(1),
                                                T(0), nullptr};
      gemm_run<T>(Cg, s.N * PQ, Kg, pa, pb, out);
    }
    return;
  }
  if (grad_input_is_forward_conv(s)) {
    const ConvShape t = grad_input_as_forward(s);
    for (int64_t g = 0; g < s.G; ++g) {
      const FlippedTransposedPackA<T> pa{w + g * Kg * CRS, Cg, s.R * s.S};
      const Im2colPackB<T> pb{t, gy + g * Kg * PQ};
      const MatrixOut<T, BatchedOutColumns> out{gx + g * Cg * HW, HW, BatchedOutColumns{s.C * HW, HW}, T(1),
                                                T(0), nullptr};
      gemm_run<T>(Cg, s.N * HW, Kg * s.R * s.S, pa, pb, out);
    }
    return;
  }
  // Strided: dcol = W^T . dY a few images at a time, scattered into gx by col2im.
  const int64_t nb_max = dgrad_chunk_images<T>(s);
  Workspace dcol(checked_bytes(CRS * nb_max * PQ, sizeof(T)));
  for (int64_t g = 0; g < s.G; ++g)
    for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
      const int64_t nb = imin(nb_max, s.N - n0), ld = nb * PQ;
      const StridedPackA<T> pa{w + g * Kg * CRS, 1, CRS};
      const BatchedPackB<T> pb{BatchedColumns<T>{gy + n0 * s.K * PQ + g * Kg * PQ, s.K * PQ, PQ, PQ}};
      const MatrixOut<T, DenseColumns> out{dcol.as<T>(), ld, DenseColumns{}, T(1), T(0), nullptr};
      gemm_run<T>(CRS, ld, Kg, pa, pb, out);
      col2im(s, g, n0, nb, dcol.as<T>(), ld, gx);
    }
}

template <typename T>
void conv_im2col_backward_weight(const ConvShape& s, const T* x, const T* gy, T* gw, T* gb) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  if (gb) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t k = 0; k < s.K; ++k) {
      T acc = T(0);
      for (int64_t n = 0; n < s.N; ++n) {
        const T* row = gy + (n * s.K + k) * PQ;
        for (int64_t i = 0; i < PQ; ++i) acc += row[i];
      }
      gb[k] = acc;
    }
  }
  if (!gw || s.K == 0 || CRS == 0) return;
  for (int64_t g = 0; g < s.G; ++g) {
    const BatchedPackA<T> pa{BatchedColumns<T>{gy + g * Kg * PQ, s.K * PQ, PQ, PQ}};
    const Im2colTransposedPackB<T> pb{s, x + g * Cg * HW};
    const MatrixOut<T, DenseColumns> out{gw + g * Kg * CRS, CRS, DenseColumns{}, T(1), T(0), nullptr};
    gemm_run<T>(Kg, CRS, s.N * PQ, pa, pb, out);
  }
}

template <typename T>
int64_t conv_im2col_workspace_bytes(const ConvShape& s, int pass) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const int nthr = num_threads();
  int64_t elems = 0;
  if (pass == 0) {
    elems = gemm_workspace_elems<T>(Kg, s.N * PQ, CRS, nthr);
  } else if (pass == 1) {
    if (is_pointwise(s)) {
      elems = gemm_workspace_elems<T>(s.Cg(), s.N * PQ, Kg, nthr);
    } else if (grad_input_is_forward_conv(s)) {
      elems = gemm_workspace_elems<T>(s.Cg(), s.N * s.H * s.W, Kg * s.R * s.S, nthr);
    } else {
      const int64_t nb = dgrad_chunk_images<T>(s);
      elems = CRS * nb * PQ + gemm_workspace_elems<T>(CRS, nb * PQ, Kg, nthr);
    }
  } else {
    elems = gemm_workspace_elems<T>(Kg, CRS, s.N * PQ, nthr);
  }
  return elems * int64_t(sizeof(T));
}

#define PYCONV_INSTANTIATE(T)                                                                        \
  template void conv_im2col_forward<T>(const ConvShape&, const T*, const T*, const T*, T*);         \
  template void conv_im2col_backward_input<T>(const ConvShape&, const T*, const T*, T*);            \
  template void conv_im2col_backward_weight<T>(const ConvShape&, const T*, const T*, T*, T*);       \
  template int64_t conv_im2col_workspace_bytes<T>(const ConvShape&, int);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace PYCONV_ISA
}  // namespace pyconv
