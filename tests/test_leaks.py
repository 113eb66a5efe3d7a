"""Leaks: each op repeated hundreds of times on the same small shapes (successful calls and calls
that raise) keeps resident memory flat. Outputs are ~64 KiB, so leaking one per call would add
>= 20 MiB over the run, above the 15 MiB bound."""
import gc
import os

import numpy as np
import pytest
import torch

import pyconv
import pyconv.functional as PF
from conftest import DispatchLog
from pyconv import PyConvError, _C

REPS = 300
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def ops():
    x = torch.randn(4, 8, 24, 24)  # 72 KiB
    w, b = torch.randn(8, 8, 3, 3), torch.randn(8)
    xg = x.clone().requires_grad_()
    bn = (torch.zeros(8), torch.ones(8), torch.ones(8), torch.zeros(8))
    ok = {
        "conv2d_direct": lambda: PF.conv2d(x, w, b, padding=1, algo="direct", backend="cpp"),
        "conv2d_im2col_grad": lambda: torch.autograd.grad(
            PF.conv2d(xg, w, b, padding=1, algo="im2col", backend="cpp").sum(), xg),
        "conv2d_winograd": lambda: PF.conv2d(x, w, b, padding=1, algo="winograd", backend="cpp"),
        "max_pool2d_grad": lambda: torch.autograd.grad(PF.max_pool2d(xg, 2, backend="cpp").sum(), xg),
        "avg_pool2d": lambda: PF.avg_pool2d(x, 3, 1, 1, backend="cpp"),
        "batch_norm_grad": lambda: torch.autograd.grad(
            PF.batch_norm(xg, bn[0].clone(), bn[1].clone(), bn[2], bn[3], True, backend="cpp").sum(), xg),
        "conv_bn_relu": lambda: PF.conv_bn_relu(x, w, b, bn[2], bn[3], bn[0].clone(), bn[1].clone(), padding=1,
                                                backend="cpp"),
        "numpy_conv2d": lambda: PF.conv2d(x.numpy(), w.numpy(), padding=1, backend="cpp"),
    }
    y = np.empty((4, 8, 24, 24), np.float32)
    shape = _C.ConvShape(4, 8, 24, 24, 8, 3, 3, 24, 24, 1, 1, 1, 1, 1, 1, 1)
    bad = {  # each raises; the error path must free what it allocated
        "conv2d_channels": lambda: PF.conv2d(x, torch.randn(8, 3, 3, 3), backend="cpp"),
        "conv2d_int": lambda: PF.conv2d(x.int(), w.int(), backend="cpp"),
        "conv2d_winograd_stride": lambda: PF.conv2d(x, w, stride=2, algo="winograd", backend="cpp"),
        "max_pool2d_pad": lambda: PF.max_pool2d(x, 2, padding=2, backend="cpp"),
        "avg_pool2d_div0": lambda: PF.avg_pool2d(x, 2, divisor_override=0, backend="cpp"),
        "batch_norm_shape": lambda: PF.batch_norm(x, torch.zeros(3), torch.ones(3), backend="cpp"),
        "binding_buffer": lambda: _C.conv_direct_forward(shape, x.numpy(), w.numpy()[:4], None, y),
        "binding_dtype": lambda: _C.conv_im2col_forward(shape, x.double().numpy(), w.numpy(), None, y),
    }
    return ok, bad


@pytest.mark.parametrize("kind", ["ok", "raises"])
def test_repeated_calls_keep_memory_flat(kind):
    ok, bad = ops()
    table = ok if kind == "ok" else bad

    def once():
        for name, fn in table.items():
            if kind == "ok":
                fn()
            else:
                with pytest.raises((PyConvError, TypeError)):
                    fn()

    for _ in range(20):  # warm-up: allocator pools, lazily loaded modules, torch caches
        once()
    gc.collect()
    before = rss_bytes()
    for _ in range(REPS):
        once()
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 15 * 2**20, f"resident memory grew {grown / 2**20:.1f} MiB over {REPS} x {len(table)} calls"


@pytest.mark.parametrize("op", ["conv_bn_relu", "batch_norm", "max_pool2d"])
def test_backward_allocates_no_gradient_for_non_differentiable_outputs(op):
    """The ops' extra outputs (conv output y, batch statistics, pool indices) take no gradient: autograd
    must not allocate zero-filled ones (for conv_bn_relu, a tensor the size of the layer's output)."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w, gamma, beta = torch.randn(4, 4, 3, 3), torch.ones(4), torch.zeros(4)
    out = {
        "conv_bn_relu": lambda: PF.conv_bn_relu(x, w, None, gamma, beta, torch.zeros(4), torch.ones(4), padding=1,
                                                backend="cpp"),
        "batch_norm": lambda: PF.batch_norm(x, torch.zeros(4), torch.ones(4), gamma, beta, True, backend="cpp"),
        "max_pool2d": lambda: PF.max_pool2d(x, 2, backend="cpp"),
    }[op]()
    with DispatchLog() as log:
        (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.shape == x.shape
    assert not [o for o in log.ops if o.startswith(("aten.zeros", "aten.zero_", "aten.fill_"))], log.ops
