"""max_pool2d / avg_pool2d against torch.nn.functional: outputs, indices, gradients, every option,
float32 and float64, for every CPU backend that implements pooling."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import pyconv
import pyconv.functional as PF
import pyconv.nn as PN
from pyconv import backends
import checks
from problems import EDGE_WIDTHS

DTYPES = [torch.float32, torch.float64]
BACKENDS = [b for b in pyconv.available_backends()
            if backends.REGISTRY[b].device == "cpu" and hasattr(backends.load(b), "max_pool2d_forward")]


def assert_close(actual, expected, dtype, what=""):
    checks.assert_close(actual, expected, dtype, what, kind="pool")


def check_max(backend, dtype, x, **kw):
    xa = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, idx = PF.max_pool2d(xa, return_indices=True, backend=backend, **kw)
    yr, idxr = F.max_pool2d(xr, return_indices=True, **kw)
    assert_close(y, yr, dtype, f"max_pool2d {kw} output")
    assert torch.equal(idx, idxr), f"max_pool2d {kw}: indices differ"
    torch.testing.assert_close(PF.max_pool2d(x, backend=backend, **kw), y.detach(), rtol=0, atol=0, equal_nan=True,
                               msg="values-only path differs")
    gy = torch.randn_like(yr)
    if yr.numel():
        (g,) = torch.autograd.grad(y, xa, gy)
        (gr,) = torch.autograd.grad(yr, xr, gy)
        assert_close(g, gr, dtype, f"max_pool2d {kw} grad_input")


def assert_sums_close(actual, expected, magnitude, dtype, what):
    """Sums of values of both signs (a window's average, overlapping windows' gradients) can cancel,
    and two correct summation orders then differ by more than the tolerance relative to the result:
    the error is bounded relative to the same sums of absolute values (`magnitude`) instead."""
    bound = checks.tol(dtype, "pool") * max(1.0, magnitude.double().norm().item() /
                                          max(expected.detach().double().norm().item(), 1e-30))
    checks.assert_close(actual, expected, dtype, what, kind="pool", bound=bound)


def check_avg(backend, dtype, x, **kw):
    xa = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = PF.avg_pool2d(xa, backend=backend, **kw)
    yr = F.avg_pool2d(xr, **kw)
    assert_sums_close(y, yr, F.avg_pool2d(x.detach().abs(), **kw), dtype, f"avg_pool2d {kw} output")
    gy = torch.randn_like(yr)
    if yr.numel():
        (g,) = torch.autograd.grad(y, xa, gy)
        (gr,) = torch.autograd.grad(yr, xr, gy)
        x_abs = x.detach().abs().requires_grad_()
        (g_abs,) = torch.autograd.grad(F.avg_pool2d(x_abs, **kw), x_abs, gy.abs())
        assert_sums_close(g, gr, g_abs, dtype, f"avg_pool2d {kw} grad_input")


MAX_GRID = [
    ((2, 3, 9, 11), dict(kernel_size=2)),
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 4, 12, 13), dict(kernel_size=3, stride=1, padding=1)),
    ((1, 2, 10, 17), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1))),
    ((2, 2, 13, 10), dict(kernel_size=3, stride=3, padding=1, dilation=2, ceil_mode=True)),
    ((1, 3, 7, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 3, 8, 8), dict(kernel_size=(4, 2), stride=(3, 3), padding=(2, 1), ceil_mode=True)),
    ((1, 2, 5, 5), dict(kernel_size=5)),
    ((1, 2, 1, 1), dict(kernel_size=1)),
    ((1, 2, 6, 40), dict(kernel_size=(1, 3), stride=(1, 4), padding=(0, 1), dilation=(1, 3))),
    ((1, 1, 2, 2), dict(kernel_size=3, stride=2, ceil_mode=True)),
]

AVG_GRID = [
    ((2, 3, 9, 11), dict(kernel_size=2)),
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((1, 4, 12, 13), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)),
    ((1, 2, 10, 17), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)),
    ((1, 3, 7, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 3, 8, 8), dict(kernel_size=(4, 2), stride=(3, 3), padding=(2, 1), ceil_mode=True)),
    ((1, 3, 8, 8), dict(kernel_size=(4, 2), stride=(3, 3), padding=(2, 1), ceil_mode=True, count_include_pad=False)),
    ((2, 2, 9, 9), dict(kernel_size=3, divisor_override=5)),
    ((2, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1, divisor_override=-2, ceil_mode=True)),
    ((1, 2, 5, 5), dict(kernel_size=5)),
    ((1, 1, 2, 2), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 2, 6, 40), dict(kernel_size=(1, 3), stride=(1, 4), padding=(0, 1))),
    # global pooling (the window is the whole plane: one sum per plane in the kernels)
    ((3, 37, 7, 7), dict(kernel_size=7)),
    ((2, 3, 4, 9), dict(kernel_size=(4, 9), divisor_override=-3)),
    ((2, 3, 1, 1), dict(kernel_size=1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", MAX_GRID, ids=lambda c: f"{c[0]}{c[1]}")
def test_max_grid(backend, dtype, case):
    size, kw = case
    check_max(backend, dtype, torch.randn(size, dtype=dtype), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", AVG_GRID, ids=lambda c: f"{c[0]}{c[1]}")
def test_avg_grid(backend, dtype, case):
    size, kw = case
    check_avg(backend, dtype, torch.randn(size, dtype=dtype), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("W", EDGE_WIDTHS + [64, 65])
def test_tile_edges(backend, W):
    """Output widths around the vector width, both strides, both ops."""
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=2, stride=2, ceil_mode=True)):
        for dtype in DTYPES:
            x = torch.randn(1, 2, 5, W, dtype=dtype)
            check_max(backend, dtype, x, **kw)
            check_avg(backend, dtype, x, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_ties_choose_torchs_index(backend, dtype):
    """Few distinct values: many ties, resolved like torch (first maximum in scan order)."""
    x = torch.randint(0, 3, (2, 3, 11, 12)).to(dtype)
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2), ceil_mode=True)):
        check_max(backend, dtype, x, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_and_inf(backend, dtype):
    x = torch.randn(2, 2, 9, 10, dtype=dtype)
    x[0, 0, 2, 3] = float("nan")
    x[0, 0, 2, 5] = float("nan")  # two NaNs in a window: torch keeps the last
    x[0, 1, 4, 4] = float("inf")
    x[1, 0] = float("-inf")  # an all -inf plane: indices are the first tap of each window
    x[1, 1, :, :4] = float("-inf")
    for kw in (dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1),
               dict(kernel_size=2, stride=2, ceil_mode=True)):
        check_max(backend, dtype, x, **kw)
        y, yr = PF.avg_pool2d(x, backend=backend, **kw), F.avg_pool2d(x, **kw)
        assert_close(y, yr, dtype, f"avg_pool2d {kw} with NaN/inf")


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 14))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 24))
    return (draw(st.integers(0, 2)), draw(st.integers(1, 3)), H, W), dict(
        kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil_mode=draw(st.booleans())), (dh, dw), \
        draw(st.booleans()), draw(st.sampled_from([None, 3, -2]))


def _torch_accepts(fn, x, **kw):
    try:
        fn(x, **kw)
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=pool_problems(), dtype=st.sampled_from(DTYPES))
def test_hypothesis(backend, problem, dtype):
    size, kw, dilation, include_pad, divisor = problem
    x = torch.randn(size, dtype=dtype)
    mkw = dict(kw, dilation=dilation)
    if pyconv_accepts(PF.max_pool2d, x, backend, **mkw):
        check_max(backend, dtype, x, **mkw)
    else:  # pyconv refuses only what torch refuses, or windows with no input element
        assert not _torch_accepts(F.max_pool2d, x, **mkw) or _has_empty_window(size, mkw)
    akw = dict(kw, count_include_pad=include_pad, divisor_override=divisor)
    if pyconv_accepts(PF.avg_pool2d, x, backend, **akw):
        check_avg(backend, dtype, x, **akw)
    else:
        assert not _torch_accepts(F.avg_pool2d, x, **akw)


def pyconv_accepts(fn, x, backend, **kw):
    try:
        fn(x, backend=backend, **kw)
        return True
    except pyconv.PyConvError:
        return False


def _has_empty_window(size, kw):
    from pyconv import _args
    s = _args.pool2d_shape_of_sizes(size, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"],
                                    kw["ceil_mode"])
    return not (_args._windows_nonempty(s.H, s.P, s.kernel_h, s.stride_h, s.pad_h, s.dil_h)
                and _args._windows_nonempty(s.W, s.Q, s.kernel_w, s.stride_w, s.pad_w, s.dil_w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 7, 8, dtype=torch.float64, requires_grad=True)  # distinct values: max is smooth
    assert torch.autograd.gradcheck(
        lambda x: PF.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True, backend=backend), (x,))
    assert torch.autograd.gradcheck(
        lambda x: PF.avg_pool2d(x, (3, 2), (2, 1), (1, 1), ceil_mode=True, count_include_pad=False,
                                backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda x: PF.avg_pool2d(x, 3, 2, 1, divisor_override=4, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_empty_layouts_numpy(backend):
    x = torch.randn(3, 9, 10)
    y, idx = PF.max_pool2d(x, 3, 2, 1, return_indices=True, backend=backend)
    yr, idxr = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(idx, idxr)
    assert_close(PF.avg_pool2d(x, 2, backend=backend), F.avg_pool2d(x, 2), torch.float32, "unbatched avg")
    e = torch.randn(0, 3, 8, 9, requires_grad=True)
    for fn in (PF.max_pool2d, PF.avg_pool2d):
        out = fn(e, 2, backend=backend)
        assert out.shape == (0, 3, 4, 4)
        out.sum().backward()
        assert e.grad.shape == e.shape
    xc = torch.randn(2, 3, 8, 9).to(memory_format=torch.channels_last)
    assert torch.equal(PF.max_pool2d(xc, 3, 2, 1, backend=backend), F.max_pool2d(xc, 3, 2, 1))
    assert_close(PF.avg_pool2d(xc, 3, 2, 1, backend=backend), F.avg_pool2d(xc, 3, 2, 1), torch.float32, "cl")
    xs = torch.randn(2, 3, 8, 18)[..., ::2]
    assert torch.equal(PF.max_pool2d(xs, 2, backend=backend), F.max_pool2d(xs, 2))
    xn = np.random.randn(2, 3, 8, 8).astype(np.float32)
    yn, idn = PF.max_pool2d(xn, 2, return_indices=True, backend=backend)
    assert isinstance(yn, np.ndarray) and isinstance(idn, np.ndarray) and idn.dtype == np.int64
    assert np.array_equal(yn, F.max_pool2d(torch.from_numpy(xn), 2).numpy())
    an = PF.avg_pool2d(xn, 2, backend=backend)
    assert isinstance(an, np.ndarray) and an.dtype == np.float32


def test_opcheck():
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    conf = ([3, 3], [2, 2], [1, 1], [1, 1], True, "cpp")
    torch.library.opcheck(torch.ops.pyconv.max_pool2d.default, (x, *conf))
    torch.library.opcheck(torch.ops.pyconv.max_pool2d_values.default, (x.detach(), *conf))
    y, idx = torch.ops.pyconv.max_pool2d(x.detach(), *conf)
    torch.library.opcheck(torch.ops.pyconv.max_pool2d_backward.default,
                          (torch.randn_like(y), idx, list(x.shape), *conf))
    aconf = ([3, 2], [2, 1], [1, 1], True, False, 0, "cpp")
    torch.library.opcheck(torch.ops.pyconv.avg_pool2d.default, (x, *aconf))
    ya = torch.ops.pyconv.avg_pool2d(x.detach(), *aconf)
    torch.library.opcheck(torch.ops.pyconv.avg_pool2d_backward.default, (torch.randn_like(ya), list(x.shape), *aconf))


BAD = [
    (dict(kernel_size=0), "both"),
    (dict(kernel_size=3, stride=0), "both"),
    (dict(kernel_size=3, padding=2), "both"),        # more than half the kernel
    (dict(kernel_size=3, padding=-1), "both"),
    (dict(kernel_size=3, padding=2, dilation=2), "max"),  # torch checks the undilated kernel
    (dict(kernel_size=3, dilation=0), "max"),
    (dict(kernel_size=20), "both"),                  # output size < 1
    (dict(kernel_size=(2, 2, 2)), "both"),
    (dict(kernel_size=2, padding=(1, 1, 1)), "both"),
    (dict(kernel_size=3, divisor_override=0), "avg"),
]


@pytest.mark.parametrize("kw,which", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_arguments_raise_like_torch(kw, which):
    x = torch.randn(1, 2, 10, 10)
    fns = {"max": (PF.max_pool2d, F.max_pool2d), "avg": (PF.avg_pool2d, F.avg_pool2d)}
    for name in (("max", "avg") if which == "both" else (which,)):
        ours, ref = fns[name]
        with pytest.raises(RuntimeError):
            ref(x, **kw)
        with pytest.raises(pyconv.PyConvError):
            ours(x, **kw)


def test_bad_inputs():
    for fn in (PF.max_pool2d, PF.avg_pool2d):
        with pytest.raises(pyconv.PyConvError):
            fn(torch.randint(0, 5, (1, 1, 4, 4)), 2)  # integer dtypes are not supported
        with pytest.raises(pyconv.PyConvError):
            fn(torch.randn(4, 4), 2)
        with pytest.raises(pyconv.PyConvError):
            fn(torch.randn(1, 0, 4, 4), 2)
        with pytest.raises(pyconv.PyConvError):
            fn(torch.randn(1, 1, 0, 4), 2)
        with pytest.raises(TypeError):
            fn([[1.0]], 2)
    # A dilated window that steps over the whole input: torch reads out of bounds; pyconv refuses.
    with pytest.raises(pyconv.PyConvError):
        PF.max_pool2d(torch.randn(1, 1, 2, 2), 2, padding=1, dilation=3)
    # Direct op calls with inconsistent buffers are refused, never reach the kernel.
    x = torch.randn(1, 1, 6, 6)
    y, idx = torch.ops.pyconv.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False, "cpp")
    with pytest.raises(pyconv.PyConvError):
        torch.ops.pyconv.max_pool2d_backward(torch.randn(1, 1, 3, 3), idx + 100, [1, 1, 6, 6], [2, 2], [2, 2],
                                             [0, 0], [1, 1], False, "cpp")
    with pytest.raises(pyconv.PyConvError):
        torch.ops.pyconv.max_pool2d_backward(torch.randn(1, 1, 4, 3), idx, [1, 1, 6, 6], [2, 2], [2, 2],
                                             [0, 0], [1, 1], False, "cpp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_layers_match_torch(backend):
    for ours, ref in ((PN.MaxPool2d(3, 2, 1, backend=backend), torch.nn.MaxPool2d(3, 2, 1)),
                      (PN.MaxPool2d(2, return_indices=True, ceil_mode=True), torch.nn.MaxPool2d(2, return_indices=True,
                                                                                            ceil_mode=True)),
                      (PN.AvgPool2d(3, 2, 1, count_include_pad=False, backend=backend),
                       torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
                      (PN.AvgPool2d(2, divisor_override=3), torch.nn.AvgPool2d(2, divisor_override=3))):
        assert isinstance(ours, type(ref))
        ours.load_state_dict(ref.state_dict())
        assert repr(ref)[:-1] in repr(ours)
        x = torch.randn(2, 3, 9, 9, requires_grad=True)
        xr = x.detach().clone().requires_grad_()
        y, yr = ours(x), ref(xr)
        if isinstance(y, tuple):
            assert torch.equal(y[1], yr[1])
            y, yr = y[0], yr[0]
        assert_close(y, yr, torch.float32, type(ref).__name__)
        gy = torch.randn_like(yr)
        y.backward(gy)
        yr.backward(gy)
        assert_close(x.grad, xr.grad, torch.float32, type(ref).__name__ + " grad")


def test_generic_isa_matches_torch():
    code = (
        "import torch, pyconv.functional as PF, torch.nn.functional as F, pyconv\n"
        "assert pyconv._C.isa() == 'generic'\n"
        "for dt in (torch.float32, torch.float64):\n"
        "  x = torch.randn(2, 3, 11, 13, dtype=dt, requires_grad=True)\n"
        "  y, i = PF.max_pool2d(x, 3, 2, 1, return_indices=True); r, ir = F.max_pool2d(x, 3, 2, 1, return_indices=True)\n"
        "  assert torch.equal(y, r) and torch.equal(i, ir)\n"
        "  g = torch.randn_like(r)\n"
        "  assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(r, x, g)[0])\n"
        "  a = PF.avg_pool2d(x, 3, 2, 1, ceil_mode=True); ar = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)\n"
        "  assert (a - ar).norm() <= 1e-6 * ar.norm()\n"
        "  u = torch.autograd.grad(a, x, a.detach())[0]; v = torch.autograd.grad(ar, x, a.detach())[0]\n"
        "  assert (u - v).norm() <= 1e-6 * v.norm()\n"
    )
    env = dict(os.environ, PYCONV_FORCE_GENERIC="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_threads_do_not_change_results():
    x = torch.randn(1, 2, 40, 37)
    y1, i1 = PF.max_pool2d(x, 3, 2, 1, return_indices=True)
    a1 = PF.avg_pool2d(x, 3, 1, 1)
    pyconv.set_num_threads(1)
    try:
        y2, i2 = PF.max_pool2d(x, 3, 2, 1, return_indices=True)
        a2 = PF.avg_pool2d(x, 3, 1, 1)
    finally:
        pyconv.set_num_threads(torch.get_num_threads())
    assert torch.equal(y1, y2) and torch.equal(i1, i2) and torch.equal(a1, a2)
