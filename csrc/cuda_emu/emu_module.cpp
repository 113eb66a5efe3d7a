// pyconv._C_cuda_emu: the kernels of csrc/cuda compiled by the host compiler and run by the CUDA
// launch emulator (csrc/cuda_emu/emulator.h) on host memory. Test-only: same functions as
// pyconv._C_cuda, so tests exercise the real kernel sources and bindings on machines without a GPU.
#include <pybind11/pybind11.h>

#include "cuda_emu/emulator.h"

namespace pyconv {
void bind_cuda_ops(pybind11::module_& m);
void register_error_translator();
void bind_emulator_selftests(pybind11::module_& m);
}  // namespace pyconv

PYBIND11_MODULE(_C_cuda_emu, m) {
  m.doc() = "pyconv CUDA kernels on the CPU launch emulator (tests only)";
  pyconv::register_error_translator();
  m.def("device_count", [] { return 1; }, "The emulator is one virtual device.");
  m.def("stats", [] {
    const auto s = pyconv::emu::stats();
    pybind11::dict d;
    d["launches"] = s.launches;
    d["blocks"] = s.blocks;
    d["syncs"] = s.syncs;
    return d;
  }, "Launches, blocks and __syncthreads crossings run by the emulator so far.");
  pyconv::bind_cuda_ops(m);
  pyconv::bind_emulator_selftests(m);
}
