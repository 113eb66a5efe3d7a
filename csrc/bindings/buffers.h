// Checks at the Python boundary: every buffer a kernel touches is checked here for dtype,
// C-contiguity, writability and exact element count, so a kernel can never index out of bounds.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/shape_checks.h"
#include "common/shapes.h"

namespace pyconv {
namespace py = pybind11;

enum class DType { f32, f64 };

inline DType dtype_of(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return DType::f32;
  if (a.dtype().is(py::dtype::of<double>())) return DType::f64;
  fail(name, ": dtype ", std::string(py::str(a.dtype())), " is not supported; expected float32 or float64");
}

template <typename T>
const T* in_buffer(const py::array& a, const char* name, int64_t numel) {
  PYCONV_CHECK(a.dtype().is(py::dtype::of<T>()), name, ": dtype ", std::string(py::str(a.dtype())),
               " does not match the other operands");
  PYCONV_CHECK(a.flags() & py::array::c_style, name, ": buffer must be C-contiguous");
  PYCONV_CHECK(static_cast<int64_t>(a.size()) == numel, name, ": buffer has ", a.size(),
               " elements but the shape needs ", numel);
  return static_cast<const T*>(a.data());
}

template <typename T>
T* out_buffer(py::array& a, const char* name, int64_t numel) {
  in_buffer<T>(a, name, numel);
  PYCONV_CHECK(a.writeable(), name, ": buffer is read-only");
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
const T* opt_in_buffer(const py::object& a, const char* name, int64_t numel) {
  if (a.is_none()) return nullptr;
  return in_buffer<T>(a.cast<py::array>(), name, numel);
}

template <typename T>
T* opt_out_buffer(const py::object& a, const char* name, int64_t numel) {
  if (a.is_none()) return nullptr;
  py::array arr = a.cast<py::array>();
  return out_buffer<T>(arr, name, numel);
}

}  // namespace pyconv
