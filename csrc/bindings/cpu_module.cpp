// pyconv._C: the C++ CPU kernels. Each op family binds itself in its own cpu_*.cpp file.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <new>

#include "common/error.h"
#include "common/host_cache.h"
#include "common/runtime.h"
#include "cpu/isa.h"

namespace py = pybind11;

namespace pyconv {
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_batch_norm(py::module_& m);
void bind_gemm(py::module_& m);
void bind_relu(py::module_& m);
void bind_winograd(py::module_& m);
}  // namespace pyconv

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyconv C++ CPU kernels";
  // Native argument errors surface as pyconv.PyConvError (a ValueError and a RuntimeError).
  static py::object error_type = py::module_::import("pyconv._errors").attr("PyConvError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pyconv::Error& e) {
      PyErr_SetString(error_type.ptr(), e.what());
    }
  });
  m.def("set_num_threads", &pyconv::set_num_threads);
  m.def("get_num_threads", &pyconv::num_threads);
  m.def("set_debug_fill", &pyconv::set_debug_fill,
        "Fill every workspace with 0xA5 bytes before use (tests).");
  m.def("isa", [] { return pyconv::isa_name(pyconv::cpu_isa()); },
        "Instruction set of the kernels chosen at run time (generic, avx2, avx512).");
  // pyconv.memory: kernel outputs from the host cache (common/host_cache.h), as uint8 arrays whose
  // owner returns the block to the cache when the last view of it (a torch tensor) is gone.
  m.def("host_cache_buffer", [](int64_t nbytes) {
    PYCONV_CHECK(nbytes > 0, "host_cache_buffer: nbytes=", nbytes, " but expected a positive size");
    void* p = pyconv::host_cache_alloc(static_cast<size_t>(nbytes));
    py::capsule owner(p, [](void* q) { pyconv::host_cache_free(q); });
    return py::array_t<uint8_t>({nbytes}, {int64_t(1)}, static_cast<uint8_t*>(p), owner);
  });
  m.def("host_cache_stats", [] {
    const pyconv::HostCacheStats s = pyconv::host_cache_stats();
    py::dict d;
    d["in_use_bytes"] = s.in_use_bytes, d["cached_bytes"] = s.cached_bytes, d["limit_bytes"] = s.limit_bytes;
    d["hits"] = s.hits, d["misses"] = s.misses;
    return d;
  });
  m.def("host_cache_set_limit", [](int64_t bytes) {
    PYCONV_CHECK(bytes >= 0, "set_cache_limit: bytes=", bytes, " but expected a size >= 0");
    pyconv::host_cache_set_limit(static_cast<size_t>(bytes));
  });
  m.def("host_cache_empty", &pyconv::host_cache_empty);
  m.def("host_cache_min_bytes", [] { return pyconv::kHostCacheMinBytes; });
  m.def("host_cache_keep_bytes", [] { return pyconv::kHostCacheKeepBytes; });
  m.def("host_cache_small_keep_bytes", [] { return pyconv::kHostCacheSmallKeepBytes; });
  pyconv::bind_conv(m);
  pyconv::bind_pool(m);
  pyconv::bind_batch_norm(m);
  pyconv::bind_gemm(m);
  pyconv::bind_relu(m);
  pyconv::bind_winograd(m);
}
