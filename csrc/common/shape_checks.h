// The native checks shared by every binding (CPU, CUDA, emulator): buffer sizes as overflow-checked
// products, and a ConvShape with sizes in range, groups dividing the channels, and an output size
// torch would produce.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "common/error.h"
#include "common/shapes.h"

namespace pyconv {

// Products of sizes, refusing values whose product could overflow int64.
inline int64_t checked_numel(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    PYCONV_CHECK(d >= 0, "negative size ", d);
    PYCONV_CHECK(d == 0 || n <= INT64_MAX / d, "size product overflows int64");
    n *= d;
  }
  return n;
}

inline void check_conv_shape(const ConvShape& s) {
  PYCONV_CHECK(s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0 && s.K >= 0, "ConvShape: negative size");
  PYCONV_CHECK(s.R >= 1 && s.S >= 1, "ConvShape: kernel size ", s.R, "x", s.S, " must be positive");
  PYCONV_CHECK(s.G >= 1 && s.C % s.G == 0 && s.K % s.G == 0, "ConvShape: groups=", s.G,
               " must divide C=", s.C, " and K=", s.K);
  PYCONV_CHECK(s.stride_h >= 1 && s.stride_w >= 1, "ConvShape: stride must be positive");
  PYCONV_CHECK(s.dil_h >= 1 && s.dil_w >= 1, "ConvShape: dilation must be positive");
  PYCONV_CHECK(s.pad_h >= 0 && s.pad_w >= 0, "ConvShape: padding must be non-negative");
  const int64_t lim = int64_t(1) << 40;
  for (int64_t v : {s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w})
    PYCONV_CHECK(v < lim, "ConvShape: size ", v, " out of range");
  // The dilated kernel extent dil*(k-1)+1 must stay in range too (the product of two < 2^40 values can overflow).
  PYCONV_CHECK(s.R - 1 <= (lim - 1) / s.dil_h && s.S - 1 <= (lim - 1) / s.dil_w, "ConvShape: dilated kernel of ",
               s.R, "x", s.S, " with dilation ", s.dil_h, "x", s.dil_w, " out of range");
  // The output size must be torch's for a bottom/right padding of pad or pad+1 ('same', even kernels).
  auto out_ok = [](int64_t in, int64_t pad, int64_t dil, int64_t k, int64_t st, int64_t out) {
    for (int64_t extra = 0; extra <= 1; ++extra) {
      const int64_t span = in + 2 * pad + extra - dil * (k - 1) - 1;
      if (span >= 0 && span / st + 1 == out) return true;
    }
    return false;
  };
  PYCONV_CHECK(out_ok(s.H, s.pad_h, s.dil_h, s.R, s.stride_h, s.P), "ConvShape: output height P=", s.P,
               " is inconsistent with H=", s.H, " pad=", s.pad_h, " R=", s.R);
  PYCONV_CHECK(out_ok(s.W, s.pad_w, s.dil_w, s.S, s.stride_w, s.Q), "ConvShape: output width Q=", s.Q,
               " is inconsistent with W=", s.W, " pad=", s.pad_w, " S=", s.S);
}

}  // namespace pyconv
