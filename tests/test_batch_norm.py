"""batch_norm against torch.nn.functional.batch_norm: output, gradients of input / weight / bias,
running statistics, training and eval, float32 and float64; the BatchNorm2d layer."""
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

DTYPES = [torch.float32, torch.float64]
BACKENDS = [b for b in pyconv.available_backends()
            if backends.REGISTRY[b].device == "cpu" and hasattr(backends.load(b), "batch_norm_forward")]


def tol(dtype):
    return checks.tol(dtype, "batch_norm")


def assert_close(actual, expected, dtype, what=""):
    checks.assert_close(actual, expected, dtype, what, kind="batch_norm")


rel_err = checks.rel_err


def run(fn, data, training, momentum, eps, gy=None):
    """fn on fresh copies of data; (output, grads of x/w/b that exist, running_mean, running_var)."""
    x, w, b, rm, rv = [None if t is None else t.clone() for t in data]
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    y = fn(x, rm, rv, w, b, training, momentum, eps)
    grads = torch.autograd.grad(y, leaves, gy) if gy is not None and y.numel() else []
    return y.detach(), list(grads), rm, rv


def check(backend, dtype, size, training, affine=True, running=True, momentum=0.1, eps=1e-5, offset=0.0):
    """pyconv vs torch. In float32 the bound is relative to a float64 torch run, and also accepts
    an error within 4x of float32 torch's own (small reductions, e.g. M = 2, are ill-conditioned)."""
    C = size[1]
    x = torch.randn(size, dtype=dtype) * 2 + offset
    data = [x, torch.randn(C, dtype=dtype) if affine else None, torch.randn(C, dtype=dtype) if affine else None,
            torch.randn(C, dtype=dtype) if running else None, torch.rand(C, dtype=dtype) + 0.5 if running else None]
    gy = torch.randn(size, dtype=dtype)

    def ours(x, rm, rv, w, b, training, momentum, eps):
        return PF.batch_norm(x, rm, rv, w, b, training, momentum, eps, backend=backend)
    got = run(ours, data, training, momentum, eps, gy)
    want = run(F.batch_norm, data, training, momentum, eps, gy)
    exact = run(F.batch_norm, [None if t is None else t.double() for t in data], training, momentum, eps,
                gy.double())
    what = f"{size} training={training} affine={affine} running={running}"
    names = ["output"] + [n for n, t in zip(("grad_input", "grad_weight", "grad_bias"), data) if t is not None]
    names += ["running_mean", "running_var"]
    flat = lambda r: [r[0], *r[1], r[2], r[3]]  # noqa: E731
    for name, a, t, e in zip(names, flat(got), flat(want), flat(exact)):
        if e is None:
            continue
        assert a.shape == e.shape and a.dtype == dtype, f"{what} {name}"
        assert torch.equal(torch.isfinite(a), torch.isfinite(e)), f"{what} {name}: non-finite values differ"
        if e.numel() == 0:
            continue
        err = rel_err(a, e)
        assert err <= max(tol(dtype), 4 * rel_err(t, e)), f"{what} {name}: relative error {err:.3g}"


GRID = [
    (2, 3, 5, 7),
    (4, 16, 8, 8),
    (1, 4, 9, 1),
    (5, 3),            # (N, C)
    (3, 2, 11),        # (N, C, L)
    (2, 3, 2, 3, 4),   # (N, C, D, H, W)
    (1, 2, 200, 200),  # several reduction chunks per row
    (3, 1, 1, 1),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("size", GRID, ids=str)
def test_grid(backend, dtype, training, size):
    check(backend, dtype, size, training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_options(backend, dtype):
    size = (3, 4, 5, 6)
    check(backend, dtype, size, True, affine=False)
    check(backend, dtype, size, True, running=False)
    check(backend, dtype, size, True, affine=False, running=False)
    check(backend, dtype, size, False, affine=False)
    check(backend, dtype, size, True, momentum=0.0)
    check(backend, dtype, size, True, momentum=1.0, eps=1e-3)
    check(backend, dtype, size, False, eps=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_mean_float32_statistics(backend):
    """float32 data with |mean| >> std: statistics accumulate in float64, so they stay accurate
    (compared with torch run in float64)."""
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64) * 0.01 + 1000.0
    rm, rv = torch.zeros(3), torch.ones(3)
    y = PF.batch_norm(x.float(), rm, rv, training=True, backend=backend)
    rm64, rv64 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    yr = F.batch_norm(x, rm64, rv64, training=True)
    # inputs rounded to float32 carry relative noise ~ 1000 * 6e-8 / 0.01 = 6e-3 of a std
    assert (y.double() - yr).abs().max() < 2e-2
    assert (rv.double() - rv64).abs().max() < 1e-6
    assert (rm.double() - rm64).abs().max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(16, 16), (15, 13)], ids=["whole-blocks", "remainder"])
def test_large_mean_float32_backward(backend, hw):
    """float32 backward with |mean| >> std and rows of several 64-value blocks (the C++ backward sums
    blocks in float, the blocks in float64; 15x13 leaves a remainder): gradients against torch in
    float64 on the same float32 inputs, within twice torch's own float32 error (the float32 mean
    alone puts grad-weight 4e-4 to 1e-3 off here, in torch too)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 3, *hw, generator=g, dtype=torch.float64) * 0.01 + 1000.0).float()
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    gy = torch.randn(x.shape, generator=g)

    def grads(dt, fn):
        xs, ws, bs = (t.to(dt).requires_grad_() for t in (x, w, b))
        return torch.autograd.grad(fn(xs, None, None, ws, bs), (xs, ws, bs), gy.to(dt))
    ref = grads(torch.float64, lambda *a: F.batch_norm(*a, training=True))
    ours = grads(torch.float32, lambda *a: PF.batch_norm(*a, training=True, backend=backend))
    theirs = grads(torch.float32, lambda *a: F.batch_norm(*a, training=True))
    for got, base, r, what in zip(ours, theirs, ref, ("input", "weight", "bias")):
        err, torch_err = (((t.double() - r).norm() / r.norm()).item() for t in (got, base))
        assert err <= 2 * torch_err + 1e-6, (what, err, torch_err)


@st.composite
def bn_problems(draw):
    N = draw(st.integers(0, 4))
    C = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 7), min_size=0, max_size=3))
    training = draw(st.booleans())
    if training and N * int(np.prod(spatial)) == 1:
        N = 2
    return (N, C, *spatial), training, draw(st.booleans()), draw(st.booleans()) or not training, \
        draw(st.sampled_from([0.1, 0.5, 0.0]))


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=bn_problems(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_hypothesis(backend, problem, dtype, seed):
    # The data comes from a drawn seed, part of the example (conftest starts every example from the
    # same generator state): a two-element batch's grad-input cancels to ~1e-7 and its relative error
    # depends on the values, so data that followed the test order passed or failed with it.
    torch.manual_seed(seed)
    size, training, affine, running, momentum = problem
    check(backend, dtype, size, training, affine=affine, running=running, momentum=momentum)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(backend, training):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def fn(x, w, b):
        return PF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, backend=backend)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("training", [False, True])
def test_one_dimensional_empty_input_matches_torch(training):
    """PyTorch's OpInfo samples include a 1-D input of shape (0,): torch returns an empty result
    (whatever the statistics' sizes) and leaves the running statistics alone."""
    for stats in (torch.zeros(3), torch.zeros(0), None):
        x = torch.empty(0, requires_grad=True)
        rm = None if stats is None else stats.clone()
        rv = None if stats is None else stats.clone() + 1
        got = PF.batch_norm(x, rm, rv, training=training)
        want = F.batch_norm(x.detach(), None if rm is None else rm.clone(), None if rv is None else rv.clone(),
                            training=training)
        assert got.shape == want.shape == (0,) and got.dtype == want.dtype and got.requires_grad
        if stats is not None:
            assert torch.equal(rm, stats) and torch.equal(rv, stats + 1)
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        PF.batch_norm(torch.empty(0, dtype=torch.int64), None, None, training=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_layouts_numpy(backend):
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    e = torch.randn(0, 3, 4, 4, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    y = PF.batch_norm(e, rm, rv, w, None, True, backend=backend)
    assert y.shape == e.shape
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)  # as torch: an empty batch leaves them alone
    gx, gw = torch.autograd.grad(y.sum(), (e, w))
    assert gx.shape == e.shape and torch.equal(gw, torch.zeros(3))
    xc = torch.randn(2, 3, 5, 6).to(memory_format=torch.channels_last)
    for training in (True, False):
        a, b = rm.clone(), rm.clone()
        c, d = rv.clone(), rv.clone()
        assert_close(PF.batch_norm(xc, a, c, training=training, backend=backend),
                     F.batch_norm(xc, b, d, training=training), torch.float32, "channels_last")
        assert_close(a, b, torch.float32, "channels_last running_mean")
    rm_s = torch.randn(6)[::2]  # strided running stats are still updated in place
    rv_s = (torch.rand(6) + 0.5)[::2]
    rm_r, rv_r = rm_s.clone(), rv_s.clone()
    x = torch.randn(4, 3, 5)
    PF.batch_norm(x, rm_s, rv_s, training=True, backend=backend)
    F.batch_norm(x, rm_r, rv_r, training=True)
    assert_close(rm_s, rm_r, torch.float32, "strided running_mean")
    assert_close(rv_s, rv_r, torch.float32, "strided running_var")
    xn = np.random.randn(4, 3, 5, 5).astype(np.float32)
    rmn, rvn = np.zeros(3, np.float32), np.ones(3, np.float32)
    yn = PF.batch_norm(xn, rmn, rvn, training=True, backend=backend)
    assert isinstance(yn, np.ndarray) and yn.dtype == np.float32
    rmt, rvt = torch.zeros(3), torch.ones(3)
    ref = F.batch_norm(torch.from_numpy(xn), rmt, rvt, training=True)
    assert_close(torch.from_numpy(yn), ref, torch.float32, "numpy")
    assert_close(torch.from_numpy(rmn), rmt, torch.float32, "numpy running_mean updated in place")


def test_nan_propagates():
    x = torch.randn(4, 2, 3, 3)
    x[1, 0, 1, 1] = float("nan")
    for training in (True, False):
        rm, rv = torch.zeros(2), torch.ones(2)
        y = PF.batch_norm(x, rm, rv, training=training)
        yr = F.batch_norm(x, torch.zeros(2), torch.ones(2), training=training)
        assert torch.equal(torch.isnan(y), torch.isnan(yr))


def test_opcheck():
    x = torch.randn(3, 4, 5, 6, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    for training in (True, False):
        rm, rv = torch.randn(4), torch.rand(4) + 0.5
        torch.library.opcheck(torch.ops.pyconv.batch_norm.default, (x, w, b, rm, rv, training, 0.1, 1e-5, "cpp"))
        torch.library.opcheck(torch.ops.pyconv.batch_norm.default, (x, None, None, None if training else rm,
                                                                     None if training else rv, training, 0.1, 1e-5,
                                                                     "cpp"))
        _, sm, si, _, _ = torch.ops.pyconv.batch_norm(x.detach(), w.detach(), b.detach(), rm, rv, training, 0.1,
                                                      1e-5, "cpp")
        for mask in ([True, True, True], [False, True, False], [True, False, False]):
            torch.library.opcheck(torch.ops.pyconv.batch_norm_backward.default,
                                  (torch.randn(3, 4, 5, 6), x.detach(), w.detach(), sm, si, training, "cpp", mask))


def test_bad_arguments_raise_like_torch():
    x = torch.randn(4, 3, 2, 2)
    cases = [
        dict(running_mean=torch.zeros(4), running_var=torch.ones(3), training=True),   # wrong sizes
        dict(running_mean=torch.zeros(3), running_var=torch.ones(2), training=False),
        dict(running_mean=torch.zeros(3), running_var=torch.ones(3), weight=torch.ones(2)),
        dict(running_mean=torch.zeros(3), running_var=torch.ones(3), bias=torch.ones(4)),
        dict(running_mean=None, running_var=None, training=False),                     # eval needs stats
        dict(running_mean=torch.zeros(3), running_var=torch.ones(3), eps=-1.0),
    ]
    for kw in cases:
        with pytest.raises((RuntimeError, ValueError)):
            F.batch_norm(x, **kw)
        with pytest.raises(pyconv.PyConvError):
            PF.batch_norm(x, **kw)
    for single in (torch.randn(1, 3), torch.randn(1, 3, 1, 1)):  # one value per channel in training
        with pytest.raises(ValueError):
            F.batch_norm(single, None, None, training=True)
        with pytest.raises(pyconv.PyConvError):
            PF.batch_norm(single, None, None, training=True)
    with pytest.raises(NotImplementedError):
        F.batch_norm(torch.randint(0, 3, (4, 3, 2, 2)), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(pyconv.PyConvError):
        PF.batch_norm(torch.randint(0, 3, (4, 3, 2, 2)), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(pyconv.PyConvError):
        PF.batch_norm(x, torch.zeros(3, dtype=torch.float64), torch.ones(3), training=True)
    with pytest.raises(TypeError):  # torch.nn.functional.batch_norm refuses momentum=None too
        PF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None)
    with pytest.raises(pyconv.PyConvError):
        PF.batch_norm(torch.randn(5), None, None, training=True)
    with pytest.raises(pyconv.PyConvError):  # direct op call with inconsistent buffers
        torch.ops.pyconv.batch_norm_backward(torch.randn(4, 3, 2, 3), x, None, torch.zeros(3), torch.ones(3),
                                             True, "cpp", [True, True, True])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                dict(momentum=0.3, eps=1e-3)], ids=str)
def test_layer_matches_torch(backend, kw):
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(5, **kw)
    if ref.affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    ours = PN.BatchNorm2d(5, backend=backend, **kw)
    assert isinstance(ours, torch.nn.BatchNorm2d)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(4, 5, 6, 7) * (step + 1) + step
        xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, yr = ours(xa), ref(xr)
        assert_close(y, yr, torch.float32, f"step {step} output")
        gy = torch.randn_like(yr)
        y.backward(gy)
        yr.backward(gy)
        assert_close(xa.grad, xr.grad, torch.float32, f"step {step} grad_input")
        if ref.affine:
            assert_close(ours.weight.grad, ref.weight.grad, torch.float32, "grad_weight")
            assert_close(ours.bias.grad, ref.bias.grad, torch.float32, "grad_bias")
        for (name, a), (_, e) in zip(ours.state_dict().items(), ref.state_dict().items()):
            if a.is_floating_point():
                assert_close(a, e, torch.float32, f"step {step} {name}")
            else:
                assert torch.equal(a, e), name
    ours.eval()
    ref.eval()
    x = torch.randn(2, 5, 3, 3)
    assert_close(ours(x), ref(x), torch.float32, "eval output")
    with pytest.raises(ValueError):
        ours(torch.randn(2, 5, 3))  # BatchNorm2d wants 4-D input, like torch


def test_generic_isa_matches_torch():
    code = (
        "import torch, pyconv.functional as PF, torch.nn.functional as F, pyconv\n"
        "assert pyconv._C.isa() == 'generic'\n"
        "for dt in (torch.float32, torch.float64):\n"
        "  x = torch.randn(3, 4, 7, 9, dtype=dt, requires_grad=True); w = torch.randn(4, dtype=dt)\n"
        "  a, b = torch.zeros(4, dtype=dt), torch.zeros(4, dtype=dt)\n"
        "  y = PF.batch_norm(x, a, torch.ones(4, dtype=dt), w, None, True)\n"
        "  r = F.batch_norm(x, b, torch.ones(4, dtype=dt), w, None, True)\n"
        "  g = torch.randn_like(r)\n"
        "  u = torch.autograd.grad(y, x, g)[0]; v = torch.autograd.grad(r, x, g)[0]\n"
        "  assert (y - r).norm() <= 1e-5 * r.norm() and (u - v).norm() <= 1e-5 * v.norm() and torch.allclose(a, b)\n"
    )
    env = dict(os.environ, PYCONV_FORCE_GENERIC="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_threads_do_not_change_results():
    x = torch.randn(2, 3, 300, 300)
    y1 = PF.batch_norm(x, None, None, training=True)
    pyconv.set_num_threads(1)
    try:
        y2 = PF.batch_norm(x, None, None, training=True)
    finally:
        pyconv.set_num_threads(torch.get_num_threads())
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu_max", [np.inf, 6.0])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("nl", [(4, 1), (3, 7), (2, 64), (4, 100), (1, 200), (2, 1000), (1, 70000)])
def test_relu_mask_bits_match_the_relu_output(dtype, relu_max, residual, nl):
    """The cpp kernels' compact ReLU mask (1 bit a value, what a bound training step keeps): the
    backward through the bits equals the backward through the forward's output, bitwise (planes of
    one value, rows of odd lengths, small planes summed a channel per task, several 32 Ki chunks a
    row; zeros, ReLU6's clip and an infinite value at the mask's edges)."""
    from pyconv import _C
    N, L = nl
    C = 3
    rng = np.random.default_rng(L)
    x = rng.standard_normal((N, C, L)).astype(dtype) * 4
    x.reshape(-1)[:: 5] = 0  # exact zeros after the normalization too (weight 1, mean, bias below)
    x.reshape(-1)[1] = np.inf if L > 2 else x.reshape(-1)[1]
    w, b = np.ones(C, dtype), rng.standard_normal(C).astype(dtype)
    res = rng.standard_normal((N, C, L)).astype(dtype) if residual else None
    s = _C.BatchNormShape(N, C, L)
    z, sm, si = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    bits = np.full(_C.batch_norm_relu_mask_words(s), 0xFFFF, np.uint64)  # stale bits must not survive
    _C.batch_norm_forward(s, x, w, b, None, None, z, sm, si, True, 0.1, 1e-5, None, True, relu_max, res, bits)
    gz = rng.standard_normal((N, C, L)).astype(dtype)
    outs = []
    for how in ("output", "bits"):
        gx, gw, gb, gr = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype), np.empty_like(x)
        _C.batch_norm_backward(s, gz, x, w, sm, si, gx, gw, gb, True, z if how == "output" else None, relu_max,
                               gr, bits if how == "bits" else None)
        outs.append((gx, gw, gb, gr))
    for a, bb in zip(*outs):
        np.testing.assert_array_equal(a, bb)
    # and the bits are the mask: set exactly where the output passes the gradient
    hi = relu_max if np.isfinite(relu_max) else np.nan
    want = ~((z <= 0) | (z >= hi))
    wpr = bits.size // (N * C)
    got = np.unpackbits(bits.reshape(N * C, wpr).view(np.uint8), axis=1, bitorder="little")[:, :L]
    np.testing.assert_array_equal(got.astype(bool), want.reshape(N * C, L))
