// Plain problem descriptions shared by every kernel. Sizes are int64_t: products such as N*K*P*Q
// exceed 2^31 on real layers. The vocabulary is CUTLASS's: N,C,H,W input, K,R,S filter, P,Q output.
#pragma once
#include <cstdint>

namespace pyconv {

struct ConvShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // filter [K][C/G][R][S]
  int64_t P = 0, Q = 0;                // output
  int64_t G = 1;                       // groups
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;  // top / left; bottom / right follow from P and Q
  int64_t dil_h = 1, dil_w = 1;

  int64_t Cg() const { return C / G; }
  int64_t Kg() const { return K / G; }
};

}  // namespace pyconv
