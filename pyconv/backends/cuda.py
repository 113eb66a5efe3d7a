"""The CUDA C++ backend: pyconv._C_cuda (csrc/cuda through csrc/bindings/cuda_ops.cpp).

Tensors reach the kernels as (address, numel) pairs; kernels run on the current torch stream of the
tensors' device and are not synchronized here (torch's stream semantics). cupy arrays arrive as
torch tensors through DLPack at the functional level (pyconv._arrays).

emulated() is the same class over pyconv._C_cuda_emu, which runs the same bindings and kernel
sources on CPU tensors through the launch emulator (tests only).
"""
from __future__ import annotations

import torch

from .._errors import PyConvError
from ..problem import ACTIVATIONS, CONV_ALGOS, WINOGRAD_ALGOS, winograd_tile
from .base import Backend

try:
    from .. import _C_cuda
    _IMPORT_ERROR = None
except ImportError as e:  # built without nvcc
    _C_cuda = None
    _IMPORT_ERROR = e


class CudaBackend(Backend):
    """The kernel table over one binding module: pyconv._C_cuda on the GPU, or pyconv._C_cuda_emu,
    the same kernel sources run on CPU tensors by the launch emulator (emulated(), tests only)."""

    conv_algos = CONV_ALGOS  # im2col = implicit GEMM: the column matrix is never materialized

    def __init__(self, name: str, lib, device_type: str, missing_reason: str = ""):
        self.name = name
        self.device = device_type
        self.lib = lib
        self.device_type = device_type
        self._missing = missing_reason

    def is_available(self) -> bool:
        if self.lib is None:
            return False
        if self.device_type != "cuda":
            return True
        return self.lib.device_count() > 0 and torch.cuda.is_available()

    def unavailable_reason(self) -> str:
        if self.lib is None:
            return self._missing
        if self.device_type == "cuda":
            if self.lib.device_count() == 0:
                return "no CUDA device is visible to the CUDA runtime"
            if not torch.cuda.is_available():
                return "this torch build has no CUDA support"
        return ""

    # ---- buffers and streams
    def _buf(self, t, name):
        if t is None:
            return None
        if t.device.type != self.device_type:
            raise PyConvError(f"{name}: on {t.device}, expected a {self.device_type} tensor")
        if not t.is_contiguous():
            raise PyConvError(f"{name}: the kernels need a contiguous tensor")
        return (t.data_ptr(), t.numel())

    def _stream(self, t) -> int:
        if self.device_type != "cuda":
            return 0
        return torch.cuda.current_stream(t.device).cuda_stream

    def _device(self, t):
        if self.device_type != "cuda":
            import contextlib
            return contextlib.nullcontext()
        return torch.cuda.device(t.device)

    @staticmethod
    def _dtype(t) -> str:
        return str(t.dtype).replace("torch.", "")

    # ---- convolution
    # Winograd: the kernels get a caller-allocated workspace on the tensors' device (kept referenced
    # until the launches are queued; torch's caching allocator orders its reuse on the same stream).
    def _winograd_plan(self, algo, pass_, shape, like, workspace=True):
        """The tile m for algo on this shape and the pass's workspace."""
        m = winograd_tile(algo, shape)
        n = self.lib.conv2d_winograd_workspace(m, pass_, tuple(shape)) if workspace else 0
        return m, (torch.empty(n, dtype=like.dtype, device=like.device) if n else None)

    def _winograd_forward(self, x, w, b, y, shape, algo):
        m, ws = self._winograd_plan(algo, "forward", shape, x)
        with self._device(x):
            self.lib.conv2d_winograd_forward(m, self._dtype(x), tuple(shape),
                                             self._buf(x, "input"), self._buf(w, "weight"), self._buf(b, "bias"),
                                             self._buf(y, "output"), self._buf(ws, "workspace"), self._stream(x))

    def _winograd_backward_input(self, gy, w, gx, shape, algo):
        m, ws = self._winograd_plan(algo, "backward_input", shape, gy)
        with self._device(gy):
            self.lib.conv2d_winograd_backward_input(m, self._dtype(gy), tuple(shape),
                                                    self._buf(gy, "grad_output"), self._buf(w, "weight"),
                                                    self._buf(gx, "grad_input"), self._buf(ws, "workspace"),
                                                    self._stream(gy))

    def _winograd_backward_weight(self, x, gy, gw, gb, shape, algo):
        m, ws = self._winograd_plan(algo, "backward_weight", shape, x, workspace=gw is not None)
        with self._device(x):
            self.lib.conv2d_winograd_backward_weight(m, self._dtype(x), tuple(shape),
                                                     self._buf(x, "input"), self._buf(gy, "grad_output"),
                                                     self._buf(gw, "grad_weight"), self._buf(gb, "grad_bias"),
                                                     self._buf(ws, "workspace"), self._stream(x))

    def conv2d_forward(self, x, w, b, y, shape, algo, stats=None, prepared=None):
        if algo in WINOGRAD_ALGOS:
            self._winograd_forward(x, w, b, y, shape, algo)
            if stats is not None:  # no epilogue hook in the Winograd output transform: a reduction over y
                self._output_stats(y, shape, stats)
            return
        if stats is not None:
            return self._conv2d_forward_stats(x, w, b, y, shape, algo, stats)
        with self._device(x):
            self.lib.conv2d_forward(algo, self._dtype(x), tuple(shape), self._buf(x, "input"),
                                    self._buf(w, "weight"), self._buf(b, "bias"), self._buf(y, "output"),
                                    self._stream(x))

    def conv2d_backward_input(self, gy, w, gx, shape, algo):
        if algo in WINOGRAD_ALGOS:
            return self._winograd_backward_input(gy, w, gx, shape, algo)
        with self._device(gy):
            self.lib.conv2d_backward_input(algo, self._dtype(gy), tuple(shape),
                                           self._buf(gy, "grad_output"), self._buf(w, "weight"),
                                           self._buf(gx, "grad_input"), self._stream(gy))

    def conv2d_backward_weight(self, x, gy, gw, gb, shape, algo):
        if algo in WINOGRAD_ALGOS:
            return self._winograd_backward_weight(x, gy, gw, gb, shape, algo)
        n = self.lib.conv2d_backward_weight_workspace(algo, tuple(shape)) if gw is not None else 0
        ws = torch.empty(n, dtype=x.dtype, device=x.device) if n else None
        with self._device(x):
            self.lib.conv2d_backward_weight(algo, self._dtype(x), tuple(shape), self._buf(x, "input"),
                                            self._buf(gy, "grad_output"), self._buf(gw, "grad_weight"),
                                            self._buf(gb, "grad_bias"), self._buf(ws, "workspace"),
                                            self._stream(x))

    # ---- pooling
    def _indices(self, idx):
        if idx.dtype != torch.int64:
            raise PyConvError(f"indices: dtype {idx.dtype}, expected torch.int64")
        return self._buf(idx, "indices")

    def max_pool2d_forward(self, x, y, indices, shape):
        with self._device(x):
            self.lib.max_pool2d_forward(self._dtype(x), tuple(shape), self._buf(x, "input"), self._buf(y, "output"),
                                        self._indices(indices), self._stream(x))

    def max_pool2d_backward(self, gy, indices, gx, shape):
        with self._device(gy):
            self.lib.max_pool2d_backward(self._dtype(gy), tuple(shape), self._buf(gy, "grad_output"),
                                         self._indices(indices), self._buf(gx, "grad_input"), self._stream(gy))

    def avg_pool2d_forward(self, x, y, shape, count_include_pad, divisor_override):
        with self._device(x):
            self.lib.avg_pool2d_forward(self._dtype(x), tuple(shape), self._buf(x, "input"), self._buf(y, "output"),
                                        bool(count_include_pad), int(divisor_override), self._stream(x))

    def avg_pool2d_backward(self, gy, gx, shape, count_include_pad, divisor_override):
        with self._device(gy):
            self.lib.avg_pool2d_backward(self._dtype(gy), tuple(shape), self._buf(gy, "grad_output"),
                                         self._buf(gx, "grad_input"), bool(count_include_pad),
                                         int(divisor_override), self._stream(gy))

    # ---- batch norm
    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                           training, momentum, eps, relu=False, stats=None):
        with self._device(x):
            self.lib.batch_norm_forward(
                self._dtype(x), tuple(shape), self._buf(x, "input"), self._buf(weight, "weight"),
                self._buf(bias, "bias"), self._buf(running_mean, "running_mean"),
                self._buf(running_var, "running_var"), self._buf(y, "output"), self._buf(save_mean, "save_mean"),
                self._buf(save_invstd, "save_invstd"), bool(training),
                0.0 if momentum is None else float(momentum), float(eps), bool(relu),
                self._buf(self._stats(stats), "stats"), self._stream(x))

    def batch_norm_backward(self, gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training,
                            relu_output=None):
        ws = torch.empty(2 * shape[1], dtype=x.dtype, device=x.device)  # per-channel sums of gy, gy*xhat
        with self._device(x):
            self.lib.batch_norm_backward(
                self._dtype(x), tuple(shape), self._buf(gy, "grad_output"), self._buf(x, "input"),
                self._buf(weight, "weight"), self._buf(save_mean, "save_mean"), self._buf(save_invstd, "save_invstd"),
                self._buf(gx, "grad_input"), self._buf(gw, "grad_weight"), self._buf(gb, "grad_bias"),
                self._buf(ws, "workspace"), self._buf(relu_output, "relu_output"), bool(training), self._stream(x))

    # ---- conv-BN-ReLU fusion
    @staticmethod
    def _stats(stats):
        if stats is not None and stats.dtype != torch.float64:
            raise PyConvError(f"stats: dtype {stats.dtype}, expected torch.float64")
        return stats

    def _conv2d_forward_stats(self, x, w, b, y, shape, algo, stats):
        n = self.lib.conv2d_forward_stats_workspace(algo, tuple(shape))
        ws = torch.empty(n, dtype=torch.float64, device=x.device)  # per-block partial sums, [2][parts][K]
        with self._device(x):
            self.lib.conv2d_forward_stats(algo, self._dtype(x), tuple(shape), self._buf(x, "input"),
                                          self._buf(w, "weight"), self._buf(b, "bias"), self._buf(y, "output"),
                                          self._buf(self._stats(stats), "stats"), self._buf(ws, "workspace"),
                                          self._stream(x))

    def _output_stats(self, y, shape, stats):
        n = self.lib.conv2d_output_stats_workspace(tuple(shape))
        ws = torch.empty(n, dtype=torch.float64, device=y.device)
        with self._device(y):
            self.lib.conv2d_output_stats(self._dtype(y), tuple(shape), self._buf(y, "output"),
                                         self._buf(self._stats(stats), "stats"), self._buf(ws, "workspace"),
                                         self._stream(y))

    def activation_forward(self, x, residual, activation):
        with self._device(x):
            self.lib.activation_forward(self._dtype(x), x.numel(), self._buf(x, "input"),
                                        self._buf(residual, "residual"), ACTIVATIONS.index(activation),
                                        self._stream(x))

    def relu_backward(self, gz, z, gx):
        with self._device(z):
            self.lib.relu_backward(self._dtype(z), z.numel(), self._buf(gz, "grad_output"), self._buf(z, "output"),
                                   self._buf(gx, "grad_input"), self._stream(z))


def _missing_reason(what, error) -> str:
    return f"{what} was not built (no nvcc at build time): {error}"


def gpu() -> CudaBackend:
    """The registered 'cuda' backend."""
    return CudaBackend("cuda", _C_cuda, "cuda", _missing_reason("pyconv._C_cuda", _IMPORT_ERROR))


def emulated() -> CudaBackend:
    """The cuda kernels on CPU tensors through the launch emulator. Test-only and deliberately not in
    the registry: orders of magnitude slower than any real backend, so backend='auto' and
    available_backends() must never offer it."""
    try:
        from .. import _C_cuda_emu
    except ImportError as e:
        return CudaBackend("cuda_emu", None, "cpu", _missing_reason("pyconv._C_cuda_emu", e))
    return CudaBackend("cuda_emu", _C_cuda_emu, "cpu")
