"""conv2d against torch.nn.functional.conv2d: forward and every gradient, for every implemented
(backend, algo) pair, float32 and float64."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import pyconv
import pyconv.functional as PF
from conftest import conv_impls
import checks
import testbed
from problems import EDGE_WIDTHS, REAL_LAYERS
from pyconv import backends
from pyconv._args import conv2d_params, conv2d_shape_of_sizes
from pyconv.problem import winograd_unsupported

IMPLS = conv_impls()
DTYPES = testbed.DTYPES
GRID = testbed.GRID


def assert_close(actual, expected, dtype, algo="direct", what=""):
    checks.assert_close(actual, expected, dtype, what, kind="conv", algo=algo)


def run_both(x, w, b, backend, algo, **kw):
    """Forward and all gradients of pyconv and torch on the same data and the same upstream grad."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    y = PF.conv2d(leaves[0], leaves[1], leaves[2] if b is not None else None, algo=algo, backend=backend, **kw)
    yr = F.conv2d(refs[0], refs[1], refs[2] if b is not None else None, **kw)
    gy = torch.randn_like(yr)
    got = torch.autograd.grad(y, leaves, gy) if yr.numel() else [torch.zeros_like(t) for t in leaves]
    want = torch.autograd.grad(yr, refs, gy) if yr.numel() else [torch.zeros_like(t) for t in refs]
    return (y, *got), (yr, *want)


def skip_unsupported(algo, N, C, H, W, K, R, S, **kw):
    """Winograd runs only 3x3 stride-1 undilated shapes; elsewhere it raises, tested in test_winograd.py."""
    g = kw.get("groups", 1)
    if algo.startswith("winograd"):
        params = conv2d_params((R, S), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1), g)
        why = winograd_unsupported(conv2d_shape_of_sizes((N, C, H, W), (K, C // g, R, S), params))
        if why:
            pytest.skip(f"{algo}: {why}")


def check(backend, algo, dtype, N, C, H, W, K, R, S, bias=True, **kw):
    skip_unsupported(algo, N, C, H, W, K, R, S, **kw)
    g = kw.get("groups", 1)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // g, R, S, dtype=dtype)
    b = torch.randn(K, dtype=dtype) if bias else None
    got, want = run_both(x, w, b, backend, algo, **kw)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, want):
        assert_close(a, e, dtype, algo, f"{backend}/{algo} {name}")


@pytest.mark.parametrize("backend,algo", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=lambda c: f"{c[:7]}{c[7]}")
def test_grid(backend, algo, dtype, case):
    *dims, kw = case
    check(backend, algo, dtype, *dims, **kw)


@pytest.mark.parametrize("backend,algo", IMPLS)
@pytest.mark.parametrize("W", EDGE_WIDTHS)
def test_tile_edges(backend, algo, W):
    check(backend, algo, torch.float32, 1, 3, 3, W, 7, 3, 3, padding=1)
    check(backend, algo, torch.float64, 1, 3, 3, W, 13, 1, 3, padding=(0, 1))


@pytest.mark.parametrize("backend,algo", IMPLS)
@pytest.mark.parametrize("layer", REAL_LAYERS, ids=[layer[0] for layer in REAL_LAYERS])
def test_real_layers(backend, algo, layer):
    _, N, C, H, W, K, R, S, stride, padding, groups = layer
    check(backend, algo, torch.float32, N, C, H, W, K, R, S, bias=False, stride=stride, padding=padding,
          groups=groups)


# ---- the kernel-table testbed (tests/testbed.py) over every backend instance that runs here: the
# CPU backends on every case, algorithm and dtype; the CUDA kernels on the CPU launch emulator on a
# thinned schedule (the emulator is slow). can_run prunes, with the backend's reason.

def table_schedules():
    """(backend instance, its runs): the CPU backends run everything, the emulator a thinned schedule."""
    out = [(backends.REGISTRY[name], testbed.full) for name in ("cpp", "numba")]
    out.append((backends.emulated(), testbed.emulator_runs))
    return [(be, runs(be)) for be, runs in out if be.is_available()]


# The emulated CUDA kernels held 5e-5 in float32 for every algorithm, Winograd included.
TABLE_TOL32 = {"cuda_emu": 5e-5}


TABLE_RUNS = [pytest.param(be, *run, id=f"{be.name}-{testbed.run_id(run)}")
              for be, runs in table_schedules() for run in runs]


@pytest.mark.parametrize("backend,algo,dtype,case", TABLE_RUNS)
def test_table(backend, algo, dtype, case):
    testbed.check_table(backend, algo, dtype, case, tol32=TABLE_TOL32.get(backend.name))


@st.composite
def conv_problems(draw):
    g = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    same = draw(st.booleans()) and draw(st.booleans())
    if same:
        stride, padding = (1, 1), "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    ph = 0 if same else padding[0]
    pw = 0 if same else padding[1]
    H = draw(st.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 12))
    W = draw(st.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 20))
    N = draw(st.integers(0, 3))
    return N, g * cg, H, W, g * kg, R, S, dict(stride=stride, padding=padding, dilation=(dh, dw), groups=g), \
        draw(st.booleans())


@pytest.mark.parametrize("backend,algo", IMPLS)
@given(problem=conv_problems(), dtype=st.sampled_from(DTYPES))
def test_hypothesis(backend, algo, problem, dtype):
    N, C, H, W, K, R, S, kw, bias = problem
    if algo.startswith("winograd"):
        # Project the drawn problem onto the shapes Winograd runs (3x3, stride 1, dilation 1), so
        # every example tests it instead of skipping the whole test.
        R = S = 3
        kw = dict(kw, stride=(1, 1), dilation=(1, 1))
        ph, pw = (1, 1) if kw["padding"] == "same" else kw["padding"]
        H, W = max(H, 3 - 2 * ph), max(W, 3 - 2 * pw)
    check(backend, algo, dtype, N, C, H, W, K, R, S, bias=bias, **kw)


@pytest.mark.parametrize("backend,algo", IMPLS)
@pytest.mark.parametrize("K,kw", [(6, dict(padding=1)), (6, dict(stride=2, padding=(1, 0), dilation=(1, 2), groups=2)),
                                  (4, dict(stride=2, padding=1, groups=4))])  # the last: depthwise
def test_gradcheck(backend, algo, K, kw):
    skip_unsupported(algo, 2, 4, 6, 7, K, 3, 3, **kw)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(K, 4 // kw.get("groups", 1), 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(K, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: PF.conv2d(x, w, b, algo=algo, backend=backend, **kw), (x, w, b))


@pytest.mark.parametrize("backend,algo", IMPLS)
def test_unbatched_empty_and_layouts(backend, algo):
    w = torch.randn(4, 3, 3, 3)
    x = torch.randn(3, 8, 9)
    assert_close(PF.conv2d(x, w, padding=1, algo=algo, backend=backend), F.conv2d(x, w, padding=1),
                 torch.float32, algo, "unbatched")
    e = torch.randn(0, 3, 8, 9, requires_grad=True)
    y = PF.conv2d(e, w, algo=algo, backend=backend)
    assert y.shape == (0, 4, 6, 7)
    y.sum().backward()
    assert e.grad.shape == e.shape
    xc = torch.randn(2, 3, 8, 9).to(memory_format=torch.channels_last)
    assert_close(PF.conv2d(xc, w, algo=algo, backend=backend), F.conv2d(xc, w), torch.float32, algo, "channels_last")
    xs = torch.randn(2, 3, 8, 18)[..., ::2]  # non-contiguous view
    assert_close(PF.conv2d(xs, w, algo=algo, backend=backend), F.conv2d(xs, w), torch.float32, algo, "strided")


@pytest.mark.parametrize("backend,algo", IMPLS)
def test_numpy_in_numpy_out(backend, algo):
    x = np.random.randn(2, 3, 8, 8).astype(np.float32)
    w = np.random.randn(4, 3, 3, 3).astype(np.float32)
    b = np.random.randn(4).astype(np.float32)
    y = PF.conv2d(x, w, b, padding=1, algo=algo, backend=backend)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1)
    assert_close(torch.from_numpy(y), ref, torch.float32, algo, "numpy")


def test_nan_and_inf_propagate():
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 4, 4] = float("inf")
    w = torch.rand(3, 2, 3, 3) + 0.1
    y, yr = PF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    assert torch.equal(torch.isnan(y), torch.isnan(yr))
    assert torch.equal(torch.isinf(y), torch.isinf(yr))


def test_opcheck():
    x = torch.randn(2, 4, 7, 8, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    args = (x, w, b, [2, 1], [1, 1, 0, 0], [1, 2], 2, "direct", "cpp")
    torch.library.opcheck(torch.ops.pyconv.conv2d.default, args)
    gy = torch.randn(2, 6, 4, 4)
    torch.library.opcheck(torch.ops.pyconv.conv2d_backward.default,
                          (gy, x.detach(), w.detach(), [2, 1], [1, 1, 0, 0], [1, 2], 2, "direct", "cpp",
                           [True, True, True]))


def test_generic_isa_matches_torch():
    """The portable kernels (chosen on CPUs without AVX2) are correct too, the im2col packer's masked
    loads, Winograd and the flat depthwise forward's mask table included."""
    code = (
        "import torch, pyconv, pyconv.functional as PF, torch.nn.functional as F\n"
        "assert pyconv._C.isa() == 'generic'\n"
        "for dt, algo, st in [(dt, a, st) for dt in (torch.float32, torch.float64)\n"
        "                     for a, st in (('auto', (1, 2)), ('im2col', (1, 2)), ('im2col', 1), ('winograd', 1))]:\n"
        "  x = torch.randn(2, 6, 11, 21, dtype=dt, requires_grad=True)\n"
        "  w = torch.randn(4, 3, 3, 3, dtype=dt, requires_grad=True)\n"
        "  y = PF.conv2d(x, w, stride=st, padding=1, groups=2, algo=algo, backend='cpp')\n"
        "  r = F.conv2d(x, w, stride=st, padding=1, groups=2)\n"
        "  g = torch.randn_like(r)\n"
        "  a = torch.autograd.grad(y, (x, w), g); e = torch.autograd.grad(r, (x, w), g)\n"
        "  for u, v in zip((y,) + a, (r,) + e): assert (u - v).norm() <= 1e-5 * v.norm(), (u - v).norm()\n"
        "  x, w = torch.randn(2, 5, 7, 7, dtype=dt), torch.randn(5, 1, 3, 3, dtype=dt)\n"  # flat depthwise
        "  y, r = PF.conv2d(x, w, padding=1, groups=5, backend='cpp'), F.conv2d(x, w, padding=1, groups=5)\n"
        "  assert (y - r).norm() <= 1e-5 * r.norm(), (y - r).norm()\n"
    )
    env = dict(__import__("os").environ, PYCONV_FORCE_GENERIC="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_threads_setting_does_not_change_results():
    x, w = torch.randn(2, 8, 10, 10), torch.randn(8, 8, 3, 3)
    y1 = PF.conv2d(x, w, padding=1)
    pyconv.set_num_threads(1)
    try:
        y2 = PF.conv2d(x, w, padding=1)
    finally:
        pyconv.set_num_threads(torch.get_num_threads())
    assert torch.equal(y1, y2)
