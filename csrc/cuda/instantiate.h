// Explicit instantiations of the host entry points of kernels.h, one macro per op family. Used by
// the nvcc translation units (csrc/cuda/*.cu) and by the emulator's (csrc/cuda_emu/emu_kernels.cpp),
// so both builds export exactly the same set.
#pragma once
#include "cuda/kernels.h"

#define PYCONV_INSTANTIATE_CONV(T)                                                                        \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void conv_direct_fprop<T>(const ConvShape&, const T*, const T*, const T*, T*, stream_t);       \
  template void conv_direct_dgrad<T>(const ConvShape&, const T*, const T*, T*, stream_t);                 \
  template void conv_direct_wgrad<T>(const ConvShape&, const T*, const T*, T*, T*, stream_t);             \
  template void conv_igemm_fprop<T>(const ConvShape&, const T*, const T*, const T*, T*, stream_t);        \
  template void conv_igemm_dgrad<T>(const ConvShape&, const T*, const T*, T*, stream_t);                  \
  template void conv_igemm_wgrad<T>(const ConvShape&, const T*, const T*, T*, T*, T*, stream_t);          \
  }                                                                                                       \
  }

#define PYCONV_INSTANTIATE_POOL(T)                                                                        \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void max_pool_fprop<T>(const PoolDims&, const T*, T*, int64_t*, stream_t);                     \
  template void max_pool_bprop<T>(const PoolDims&, const T*, const int64_t*, T*, stream_t);               \
  template void avg_pool_fprop<T>(const PoolDims&, const T*, T*, bool, int64_t, stream_t);                \
  template void avg_pool_bprop<T>(const PoolDims&, const T*, T*, bool, int64_t, stream_t);                \
  }                                                                                                       \
  }

#define PYCONV_INSTANTIATE_BATCH_NORM(T)                                                                  \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void batch_norm_fprop<T>(const BatchNormDims&, const T*, const T*, const T*, T*, T*, T*, T*,   \
                                    T*, bool, double, double, bool, const double*, stream_t);             \
  template void batch_norm_bprop<T>(const BatchNormDims&, const T*, const T*, const T*, const T*,         \
                                    const T*, const T*, T*, T*, T*, T*, bool, stream_t);                  \
  }                                                                                                       \
  }

#define PYCONV_INSTANTIATE_RELU(T)                                                                        \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void activation_fprop<T>(int64_t, T*, const T*, int, stream_t);                                 \
  template void relu_bprop<T>(int64_t, const T*, const T*, T*, stream_t);                                 \
  }                                                                                                       \
  }

#define PYCONV_INSTANTIATE_CONV_STATS(T)                                                                  \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void conv_direct_fprop_stats<T>(const ConvShape&, const T*, const T*, const T*, T*, double*,   \
                                           double*, stream_t);                                            \
  template void conv_igemm_fprop_stats<T>(const ConvShape&, const T*, const T*, const T*, T*, double*,    \
                                          double*, stream_t);                                             \
  template void conv_output_stats<T>(const ConvShape&, T*, double*, double*, stream_t);                  \
  }                                                                                                       \
  }

#define PYCONV_INSTANTIATE_CONV_WINOGRAD(T)                                                               \
  namespace pyconv {                                                                                      \
  namespace kern {                                                                                        \
  template void conv_winograd_fprop<T>(const ConvShape&, int, const T*, const T*, const T*, T*, T*,       \
                                       stream_t);                                                         \
  template void conv_winograd_dgrad<T>(const ConvShape&, int, const T*, const T*, T*, T*, stream_t);      \
  template void conv_winograd_wgrad<T>(const ConvShape&, int, const T*, const T*, T*, T*, T*, stream_t);  \
  }                                                                                                       \
  }
