"""Test-only: the cuda backend's kernel table on CPU tensors, run by pyconv._C_cuda_emu (the kernel
sources of csrc/cuda compiled by g++ and executed by the CUDA launch emulator, one std::thread per
CUDA thread). It is deliberately not in the backend registry: it is orders of magnitude slower than
any real backend, so backend='auto' and available_backends() must never offer it. Tests import it
directly (tests/test_cuda_emulated.py)."""
from __future__ import annotations

from .. import _C_cuda_emu
from .cuda import CONV_ALGOS, KernelTable  # noqa: F401

IMPLEMENTED = True
_TABLE = KernelTable(_C_cuda_emu, "cpu")


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def stats() -> dict:
    """Launches, blocks and __syncthreads crossings the emulator has run (tests)."""
    return _C_cuda_emu.stats()


conv2d_forward = _TABLE.conv2d_forward
conv2d_backward_input = _TABLE.conv2d_backward_input
conv2d_backward_weight = _TABLE.conv2d_backward_weight
max_pool2d_forward = _TABLE.max_pool2d_forward
max_pool2d_backward = _TABLE.max_pool2d_backward
avg_pool2d_forward = _TABLE.avg_pool2d_forward
avg_pool2d_backward = _TABLE.avg_pool2d_backward
batch_norm_forward = _TABLE.batch_norm_forward
batch_norm_backward = _TABLE.batch_norm_backward
relu_forward = _TABLE.relu_forward
relu_backward = _TABLE.relu_backward
