// The inference epilogue arguments of the forward convolution bindings (residual, activation index),
// checked once for every algorithm.
#pragma once
#include <pybind11/pybind11.h>

#include "bindings/buffers.h"
#include "cpu/relu.h"

namespace pyconv {

template <typename T>
ConvEpilogue<T> conv_epilogue(const py::object& residual, int act, int64_t ny, const T* y, bool has_stats) {
  PYCONV_CHECK(act >= kActNone && act <= kActRelu6, "activation: index ", act,
               " is not 0 (none), 1 (relu) or 2 (relu6)");
  ConvEpilogue<T> ep;
  ep.act = act;
  ep.residual = opt_in_buffer<T>(residual, "residual", ny);
  ep.y = y;
  PYCONV_CHECK(!(has_stats && ep.active()),
               "stats and an activation or residual epilogue cannot be combined (the statistics are of the "
               "convolution's output)");
  return ep;
}

}  // namespace pyconv
