"""The numba_cuda backend: the numba.cuda kernels of kernels/cuda, orchestrated by
pyconv.kernels.cuda.host (launch shapes, scratch, streams; host tensors under the simulator).
numba.cuda is imported on first use, so importing pyconv does not pay for it."""
from __future__ import annotations

from ..problem import CONV_ALGOS
from .base import Backend


def _host():
    from ..kernels.cuda import host

    return host


class NumbaCudaBackend(Backend):
    name = "numba_cuda"
    device = "cuda"
    # im2col = implicit GEMM with shared-memory tiles; winograd*: F(2x2,3x3) / F(4x4,3x3)
    conv_algos = CONV_ALGOS

    def is_available(self) -> bool:
        try:
            from numba import cuda

            return bool(cuda.is_available())
        except Exception:  # numba missing or a broken CUDA driver: unavailable, with the reason below
            return False

    def unavailable_reason(self) -> str:
        try:
            from numba import cuda
        except ImportError as e:
            return f"numba is not importable: {e}"
        if cuda.is_available():
            return ""
        return "numba.cuda sees no CUDA device (set NUMBA_ENABLE_CUDASIM=1 for the simulator)"

    def conv2d_forward(self, x, w, b, y, shape, algo, stats=None, prepared=None):
        _host().conv2d_forward(x, w, b, y, shape, algo, stats)

    def conv2d_backward_input(self, gy, w, gx, shape, algo):
        _host().conv2d_backward_input(gy, w, gx, shape, algo)

    def conv2d_backward_weight(self, x, gy, gw, gb, shape, algo):
        _host().conv2d_backward_weight(x, gy, gw, gb, shape, algo)

    def max_pool2d_forward(self, x, y, indices, shape):
        _host().max_pool2d_forward(x, y, indices, shape)

    def max_pool2d_backward(self, gy, indices, gx, shape):
        _host().max_pool2d_backward(gy, indices, gx, shape)

    def avg_pool2d_forward(self, x, y, shape, count_include_pad, divisor_override):
        _host().avg_pool2d_forward(x, y, shape, count_include_pad, divisor_override)

    def avg_pool2d_backward(self, gy, gx, shape, count_include_pad, divisor_override):
        _host().avg_pool2d_backward(gy, gx, shape, count_include_pad, divisor_override)

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                           training, momentum, eps, relu=False, stats=None):
        _host().batch_norm_forward(x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                                   training, momentum, eps, relu, stats)

    def batch_norm_backward(self, gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training,
                            relu_output=None):
        _host().batch_norm_backward(gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training, relu_output)

    def activation_forward(self, x, residual, activation):
        _host().activation_forward(x, residual, activation)

    def relu_backward(self, gz, z, gx):
        _host().relu_backward(gz, z, gx)
