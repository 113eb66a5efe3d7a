"""Checks of the numba_cuda backend's kernel table against torch.nn.functional: conv2d forward and
every gradient (the shared testbed, tests/testbed.py), pools (indices too), batch norm (running stats
too), ReLU; float32 and float64.

Not collected by the main run (no test_ prefix): tests/test_numba_cuda.py runs this file in a
subprocess, under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, which must be set before numba is
imported: pyconv imports numba) or on a real GPU. Tensors live where the kernels can take them: CPU
tensors under the simulator (copied through numba device arrays), CUDA tensors on a GPU. The shapes
are tiny because the simulator runs one Python thread per CUDA thread and polls them at every
syncthreads (the direct grad-weight's cost grows with the number of weight elements).
"""
import os

import checks
import pool_bn_checks
import pytest
import testbed
import torch
import torch.nn.functional as F

from pyconv import _args, backends

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
DEV = "cpu" if SIMULATOR else "cuda"
DTYPES = [torch.float32, torch.float64]
TOL32 = 2e-5

pytestmark = pytest.mark.skipif("numba_cuda" not in backends.available_backends() and not SIMULATOR,
                                reason="numba.cuda has no device")


def nc():
    return backends.load("numba_cuda")


def close(a, e, dtype, what, tol32=TOL32):
    checks.assert_close(a, e, dtype, what, kind="table", tol32=tol32)


def nan_like(shape, dtype):
    return checks.nan_like(shape, dtype, DEV)


def randn(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device=DEV)


# The convolution testbed (tests/testbed.py) on this backend's kernel table: the simulator's schedule.
@pytest.mark.parametrize("algo,dtype,case", testbed.simulator_runs(nc()),
                         ids=[testbed.run_id(r) for r in testbed.simulator_runs(nc())])
def test_conv2d(algo, dtype, case):
    testbed.check_table(nc(), algo, dtype, case, device=DEV, tol32=TOL32, tol64=checks.TOLERANCES["table"][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv2d_weight_grad_chunks(dtype, monkeypatch):
    """im2col grad-weight with the N*P*Q reduction split over several blocks (partials + reduce kernel),
    a chunk ending inside a tile, and no bias."""
    from pyconv.kernels.cuda import host

    monkeypatch.setattr(host, "_WGRAD_CHUNK_MIN", 5)
    x, w = randn(2, 2, 4, 4, dtype=dtype), randn(3, 2, 2, 2, dtype=dtype)  # N*P*Q = 50
    s = _args.conv2d_shape(x, w, None, _args.conv2d_params((2, 2), 1, 1, 1, 1))
    gy = randn(2, 3, s.P, s.Q, dtype=dtype)
    xr = x.clone()
    wr = w.clone().requires_grad_()
    ref = torch.autograd.grad(F.conv2d(xr, wr, padding=1), wr, gy)[0]
    for algo in ("im2col", "direct"):
        gw = nan_like(w.shape, dtype)
        nc().conv2d_backward_weight(x, gy, gw, None, s, algo)
        close(gw, ref, dtype, f"grad_weight {algo}")


def test_conv2d_unknown_algo():
    x, w = randn(1, 1, 3, 3, dtype=torch.float32), randn(1, 1, 3, 3, dtype=torch.float32)
    s = _args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 0, 1, 1))
    assert "fft" in nc().can_run("conv2d_forward", "fft", s)


POOLS = [
    # N, C, H, W, kernel, stride, padding, dilation, ceil_mode
    (1, 2, 6, 5, 2, None, 0, 1, False),
    (1, 2, 6, 6, 3, 2, 1, 1, True),
    (1, 1, 6, 6, (3, 2), (2, 1), (1, 0), (2, 2), True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d(dtype, case):
    pool_bn_checks.check_max_pool2d(nc(), DEV, dtype, case, TOL32)


def test_max_pool2d_all_minus_inf():
    pool_bn_checks.check_max_pool2d_all_minus_inf(nc(), DEV)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [c for c in POOLS if c[7] == 1])
@pytest.mark.parametrize("include_pad,divisor", [(True, None), (False, None), (True, 3)])
def test_avg_pool2d(dtype, case, include_pad, divisor):
    pool_bn_checks.check_avg_pool2d(nc(), DEV, dtype, case, include_pad, divisor, TOL32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("size", [(3, 2, 5, 3), (2, 3, 7), (40, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine,running", [(True, True), (False, True), (True, False)])
def test_batch_norm(dtype, size, training, affine, running):
    if not training and not running:
        pytest.skip("eval needs running statistics")
    pool_bn_checks.check_batch_norm(nc(), DEV, dtype, size, training, affine, running, TOL32)


def test_batch_norm_empty_batch():
    x = randn(0, 3, 4, dtype=torch.float64)
    rm, rv = randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64, device=DEV) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    s = _args.batch_norm_shape(x, rm, rv, None, None, True, 0.1, 1e-5)
    mean, invstd = nan_like((3,), torch.float64), nan_like((3,), torch.float64)
    nc().batch_norm_forward(x, None, None, rm, rv, torch.empty_like(x), mean, invstd, s, True, 0.1, 1e-5)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
    assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(invstd, torch.zeros_like(invstd))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu(dtype):
    x = randn(3, 50, dtype=dtype)
    x[0, 0] = float("nan")
    x[0, 1] = 0.0
    z = x.clone()
    nc().activation_forward(z, None, "relu")
    assert torch.equal(torch.isnan(z), torch.isnan(x))
    zr = torch.relu(x)
    assert torch.equal(z[~torch.isnan(z)], zr[~torch.isnan(zr)])
    gz = randn(3, 50, dtype=dtype)
    gx = nan_like(x.shape, dtype)
    nc().relu_backward(gz, z, gx)
    assert torch.equal(gx, torch.where(z <= 0, torch.zeros_like(gz), gz))  # NaN passes the gradient, as torch


@pytest.mark.skipif(SIMULATOR, reason="the public path needs CUDA tensors (registry device 'cuda')")
@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_public_conv2d_on_gpu(algo):
    import pyconv.functional as PF

    x = randn(2, 8, 12, 12, dtype=torch.float64).requires_grad_()
    w = randn(6, 4, 3, 3, dtype=torch.float64).requires_grad_()
    b = randn(6, dtype=torch.float64).requires_grad_()
    y = PF.conv2d(x, w, b, stride=2, padding=1, groups=2, algo=algo, backend="numba_cuda")
    yr = F.conv2d(x, w, b, stride=2, padding=1, groups=2)
    gy = torch.randn_like(yr)
    got, want = torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(yr, (x, w, b), gy)
    close(y.detach(), yr.detach(), torch.float64, "output")
    for g, r, what in zip(got, want, ("grad_input", "grad_weight", "grad_bias")):
        close(g, r, torch.float64, what)


def test_conv2d_winograd_rejects_shapes():
    from pyconv import PyConvError

    x, w = randn(1, 1, 6, 6, dtype=torch.float32), randn(1, 1, 3, 3, dtype=torch.float32)
    s = _args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 2, 0, 1, 1))
    with pytest.raises(PyConvError, match="winograd_4x4.*stride 1"):
        nc().conv2d_forward(x, w, None, nan_like((1, 1, s.P, s.Q), torch.float32), s, "winograd_4x4")
    with pytest.raises(PyConvError, match="winograd.*stride 1"):
        nc().conv2d_backward_weight(x, nan_like((1, 1, s.P, s.Q), torch.float32), nan_like(w.shape, torch.float32),
                                    None, s, "winograd")


# ---- the fused conv-BN-ReLU pieces: the CPU backends' table checks, run on this backend ---------

from test_conv_bn_relu import test_batch_norm_relu_keywords as batch_norm_relu_check  # noqa: E402
from test_conv_bn_relu import test_conv_forward_stats as conv_stats_check  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_forward_stats(dtype):
    # the statistics kernel runs after either algorithm; direct is the fast one under the simulator
    conv_stats_check("numba_cuda", "direct", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_keywords(dtype, training):
    batch_norm_relu_check("numba_cuda", dtype, training)
