"""The numba backend's pooling and batch-norm kernels, called through its kernel table, against
torch.nn.functional: outputs, argmax indices, every gradient, running statistics; float32 and float64."""
import pytest
import torch
import torch.nn.functional as F

from pyconv import _args, backends

pytestmark = pytest.mark.skipif("numba" not in backends.available_backends(), reason="numba not available")
DTYPES = [torch.float32, torch.float64]


def nb():
    return backends.load("numba")


def close(a, e, dtype, what):
    assert a.shape == e.shape, what
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaNs differ"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    fin = torch.isfinite(e)
    err = (a[fin].double() - e[fin].double()).norm() / max(e[fin].double().norm().item(), 1e-30)
    assert err <= tol, f"{what}: relative error {err:.3g}"


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


POOLS = [
    # (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
    (2, 3, 8, 9, 2, None, 0, 1, False),
    (1, 4, 11, 10, 3, 2, 1, 1, False),
    (2, 2, 11, 10, 3, 2, 1, 1, True),
    (1, 3, 12, 13, (3, 2), (2, 1), (1, 0), (2, 3), True),
    (1, 2, 7, 7, 7, 1, 3, 1, False),
    (1, 1, 1, 1, 1, 1, 0, 1, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d(dtype, case):
    N, C, H, W, k, st, pad, dil, ceil = case
    x = torch.randn(N, C, H, W, dtype=dtype)
    x[0, 0, 0, 0] = float("nan") if H * W > 4 else x[0, 0, 0, 0]
    s = _args.pool2d_shape(x, k, st, pad, dil, ceil, "max_pool2d")
    y, idx = nan_like((N, C, s.P, s.Q), dtype), torch.full((N, C, s.P, s.Q), -1, dtype=torch.int64)
    nb().max_pool2d_forward(x, y, idx, s)
    xr = x.clone().requires_grad_()
    yr, ir = F.max_pool2d(xr, k, st, pad, dil, ceil_mode=ceil, return_indices=True)
    close(y, yr.detach(), dtype, "output")
    assert torch.equal(idx, ir)
    gy = torch.randn_like(yr)
    gx = nan_like(x.shape, dtype)
    nb().max_pool2d_backward(gy, idx, gx, s)
    close(gx, torch.autograd.grad(yr, xr, gy)[0], dtype, "grad_input")


def test_max_pool2d_all_minus_inf():
    x = torch.full((1, 1, 4, 4), float("-inf"))
    s = _args.pool2d_shape(x, 3, 2, 1, 1, False, "max_pool2d")
    y, idx = nan_like((1, 1, s.P, s.Q), x.dtype), torch.empty((1, 1, s.P, s.Q), dtype=torch.int64)
    nb().max_pool2d_forward(x, y, idx, s)
    yr, ir = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(idx, ir)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [c for c in POOLS if c[7] == 1])
@pytest.mark.parametrize("include_pad,divisor", [(True, None), (False, None), (True, 3)])
def test_avg_pool2d(dtype, case, include_pad, divisor):
    N, C, H, W, k, st, pad, _, ceil = case
    x = torch.randn(N, C, H, W, dtype=dtype)
    s = _args.pool2d_shape(x, k, st, pad, 1, ceil, "avg_pool2d")
    y = nan_like((N, C, s.P, s.Q), dtype)
    nb().avg_pool2d_forward(x, y, s, include_pad, _args.divisor(divisor))
    xr = x.clone().requires_grad_()
    yr = F.avg_pool2d(xr, k, st, pad, ceil_mode=ceil, count_include_pad=include_pad, divisor_override=divisor)
    close(y, yr.detach(), dtype, "output")
    gy = torch.randn_like(yr)
    gx = nan_like(x.shape, dtype)
    nb().avg_pool2d_backward(gy, gx, s, include_pad, _args.divisor(divisor))
    close(gx, torch.autograd.grad(yr, xr, gy)[0], dtype, "grad_input")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("size", [(4, 3, 5, 6), (2, 5, 7), (3, 4), (1, 2, 1, 3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine,running", [(True, True), (False, True), (True, False)])
def test_batch_norm(dtype, size, training, affine, running):
    if not training and not running:
        pytest.skip("eval needs running statistics")
    C = size[1]
    x = torch.randn(size, dtype=dtype) * 3 + 1
    w = torch.rand(C, dtype=dtype) + 0.5 if affine else None
    b = torch.randn(C, dtype=dtype) if affine else None
    rm = torch.randn(C, dtype=dtype) if running else None
    rv = torch.rand(C, dtype=dtype) + 0.5 if running else None
    momentum, eps = 0.2, 1e-5
    s = _args.batch_norm_shape(x, rm, rv, w, b, training, momentum, eps)
    rm_ref = None if rm is None else rm.clone()
    rv_ref = None if rv is None else rv.clone()
    y = nan_like(x.shape, dtype)
    mean, invstd = nan_like((C,), dtype), nan_like((C,), dtype)
    nb().batch_norm_forward(x, w, b, rm, rv, y, mean, invstd, s, training, momentum, eps)
    leaves = [x.clone().requires_grad_()] + ([w.clone().requires_grad_(), b.clone().requires_grad_()] if affine else [])
    yr = F.batch_norm(leaves[0], rm_ref, rv_ref, leaves[1] if affine else None, leaves[2] if affine else None,
                      training, momentum, eps)
    close(y, yr.detach(), dtype, "output")
    if running:
        close(rm, rm_ref, dtype, "running_mean")
        close(rv, rv_ref, dtype, "running_var")
    dims = [0] + list(range(2, x.dim()))
    if training:
        close(mean, x.mean(dims), dtype, "save_mean")
        close(invstd, 1 / torch.sqrt(x.var(dims, unbiased=False) + eps), dtype, "save_invstd")
    gy = torch.randn_like(yr)
    ref = torch.autograd.grad(yr, leaves, gy)
    gx = nan_like(x.shape, dtype)
    gw, gb = (nan_like((C,), dtype), nan_like((C,), dtype)) if affine else (None, None)
    nb().batch_norm_backward(gy, x, w, mean, invstd, gx, gw, gb, s, training)
    close(gx, ref[0], dtype, "grad_input")
    if affine:
        close(gw, ref[1], dtype, "grad_weight")
        close(gb, ref[2], dtype, "grad_bias")
