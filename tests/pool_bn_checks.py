"""Checks of one backend's pooling and batch-norm kernel-table entries against torch.nn.functional:
outputs, argmax indices (NaN and -inf windows), every gradient, running statistics. Shared by the
numba CPU tests (test_numba_pool_bn.py) and the numba_cuda checks (numba_cuda_checks.py, run under
the CUDA simulator or on a GPU); `dev` is where the backend takes its tensors. Not collected itself."""
import torch
import torch.nn.functional as F

import checks

from pyconv import _args


def close(a, e, dtype, what, tol32):
    checks.assert_close(a, e, dtype, what, kind="table", tol32=tol32)


def nan_like(shape, dtype, dev):
    return checks.nan_like(shape, dtype, dev)


def check_max_pool2d(mod, dev, dtype, case, tol32):
    N, C, H, W, k, st, pad, dil, ceil = case
    x = torch.randn(N, C, H, W, dtype=dtype, device=dev)
    if H * W > 4:
        x[0, 0, 1, 1] = float("nan")
        x[0, -1, 0, :2] = float("-inf")
    s = _args.pool2d_shape(x, k, st, pad, dil, ceil, "max_pool2d")
    y = nan_like((N, C, s.P, s.Q), dtype, dev)
    idx = torch.full((N, C, s.P, s.Q), -1, dtype=torch.int64, device=dev)
    mod.max_pool2d_forward(x, y, idx, s)
    xr = x.clone().requires_grad_()
    yr, ir = F.max_pool2d(xr, k, st, pad, dil, ceil_mode=ceil, return_indices=True)
    close(y, yr.detach(), dtype, "output", tol32)
    assert torch.equal(idx, ir)
    gy = torch.randn(yr.shape, dtype=dtype, device=dev)
    gx = nan_like(x.shape, dtype, dev)
    mod.max_pool2d_backward(gy, idx, gx, s)
    close(gx, torch.autograd.grad(yr, xr, gy)[0], dtype, "grad_input", tol32)


def check_max_pool2d_all_minus_inf(mod, dev):
    x = torch.full((1, 1, 4, 4), float("-inf"), device=dev)
    s = _args.pool2d_shape(x, 3, 2, 1, 1, False, "max_pool2d")
    y = nan_like((1, 1, s.P, s.Q), x.dtype, dev)
    idx = torch.empty((1, 1, s.P, s.Q), dtype=torch.int64, device=dev)
    mod.max_pool2d_forward(x, y, idx, s)
    yr, ir = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(idx, ir)


def check_avg_pool2d(mod, dev, dtype, case, include_pad, divisor, tol32):
    N, C, H, W, k, st, pad, _, ceil = case
    x = torch.randn(N, C, H, W, dtype=dtype, device=dev)
    s = _args.pool2d_shape(x, k, st, pad, 1, ceil, "avg_pool2d")
    y = nan_like((N, C, s.P, s.Q), dtype, dev)
    mod.avg_pool2d_forward(x, y, s, include_pad, _args.divisor(divisor))
    xr = x.clone().requires_grad_()
    yr = F.avg_pool2d(xr, k, st, pad, ceil_mode=ceil, count_include_pad=include_pad, divisor_override=divisor)
    close(y, yr.detach(), dtype, "output", tol32)
    gy = torch.randn(yr.shape, dtype=dtype, device=dev)
    gx = nan_like(x.shape, dtype, dev)
    mod.avg_pool2d_backward(gy, gx, s, include_pad, _args.divisor(divisor))
    close(gx, torch.autograd.grad(yr, xr, gy)[0], dtype, "grad_input", tol32)


def check_batch_norm(mod, dev, dtype, size, training, affine, running, tol32):
    C = size[1]
    x = torch.randn(size, dtype=dtype, device=dev) * 3 + 1
    w = torch.rand(C, dtype=dtype, device=dev) + 0.5 if affine else None
    b = torch.randn(C, dtype=dtype, device=dev) if affine else None
    rm = torch.randn(C, dtype=dtype, device=dev) if running else None
    rv = torch.rand(C, dtype=dtype, device=dev) + 0.5 if running else None
    momentum, eps = 0.2, 1e-5
    s = _args.batch_norm_shape(x, rm, rv, w, b, training, momentum, eps)
    rm_ref = None if rm is None else rm.clone()
    rv_ref = None if rv is None else rv.clone()
    y = nan_like(x.shape, dtype, dev)
    mean, invstd = nan_like((C,), dtype, dev), nan_like((C,), dtype, dev)
    mod.batch_norm_forward(x, w, b, rm, rv, y, mean, invstd, s, training, momentum, eps)
    leaves = [x.clone().requires_grad_()] + ([w.clone().requires_grad_(), b.clone().requires_grad_()] if affine else [])
    yr = F.batch_norm(leaves[0], rm_ref, rv_ref, leaves[1] if affine else None, leaves[2] if affine else None,
                      training, momentum, eps)
    close(y, yr.detach(), dtype, "output", tol32)
    if running:
        close(rm, rm_ref, dtype, "running_mean", tol32)
        close(rv, rv_ref, dtype, "running_var", tol32)
    dims = [0] + list(range(2, x.dim()))
    if training:
        close(mean, x.mean(dims), dtype, "save_mean", tol32)
        close(invstd, 1 / torch.sqrt(x.var(dims, unbiased=False) + eps), dtype, "save_invstd", tol32)
    gy = torch.randn(yr.shape, dtype=dtype, device=dev)
    ref = torch.autograd.grad(yr, leaves, gy)
    gx = nan_like(x.shape, dtype, dev)
    gw, gb = (nan_like((C,), dtype, dev), nan_like((C,), dtype, dev)) if affine else (None, None)
    mod.batch_norm_backward(gy, x, w, mean, invstd, gx, gw, gb, s, training)
    close(gx, ref[0], dtype, "grad_input", tol32)
    if affine:
        close(gw, ref[1], dtype, "grad_weight", tol32)
        close(gb, ref[2], dtype, "grad_bias", tol32)
