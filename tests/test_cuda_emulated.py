"""The CUDA C++ kernels (csrc/cuda) on the CPU launch emulator: the unchanged kernel sources,
compiled by g++ and run with one std::thread per CUDA thread, a real barrier for __syncthreads and
per-block shared memory, through the cuda backend class over the emulator (pyconv.backends.emulated()).
Convolution against torch runs in the shared testbed (tests/testbed.py via test_conv2d.py::test_table);
here: the emulator itself, workspaces and split-K, binding checks, pooling, batch norm and the
conv-BN-ReLU pieces, float32 and float64. Small grids: the emulator is slow."""
import pytest
import torch
import torch.nn.functional as F

import checks
from pyconv import _args, backends
from pyconv._errors import PyConvError
from pyconv.problem import winograd_tile

emu = backends.emulated()
if not emu.is_available():
    pytest.skip(f"the CUDA launch emulator: {emu.unavailable_reason()}", allow_module_level=True)

DTYPES = [torch.float32, torch.float64]
NAN = float("nan")

def assert_close(actual, expected, dtype, what):
    checks.assert_close(actual, expected, dtype, what, kind="gpu")


def nan_like(t, shape=None):
    return torch.full(tuple(t.shape) if shape is None else shape, NAN, dtype=t.dtype)


def conv_shape(x, w, kw):
    p = _args.conv2d_params(tuple(w.shape[2:]), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                            kw.get("groups", 1))
    return _args.conv2d_shape(x, w, None, p)


def test_conv2d_no_bias_and_partial_grads():
    x, w = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    shape = conv_shape(x, w, {})
    y = nan_like(x, (2, 5, 4, 4))
    emu.conv2d_forward(x, w, None, y, shape, "im2col")
    assert_close(y, F.conv2d(x, w), torch.float64, "output without bias")
    gy = torch.randn_like(y)
    gb = torch.full((5,), NAN, dtype=torch.float64)
    emu.conv2d_backward_weight(x, gy, None, gb, shape, "im2col")  # bias gradient only
    assert_close(gb, gy.sum((0, 2, 3)), torch.float64, "grad_bias alone")


def test_igemm_wgrad_split_k_is_deterministic_and_uses_barriers():
    x, w = torch.randn(3, 5, 8, 8), torch.randn(7, 5, 3, 3)
    shape = conv_shape(x, w, dict(padding=1))
    assert emu.lib.conv2d_backward_weight_workspace("im2col", tuple(shape)) > 0, "expected split-K"
    gy = torch.randn(3, 7, 8, 8)
    before = emu.lib.stats()
    outs = []
    for _ in range(2):
        gw = nan_like(w)
        emu.conv2d_backward_weight(x, gy, gw, None, shape, "im2col")
        outs.append(gw)
    after = emu.lib.stats()
    assert torch.equal(outs[0], outs[1])
    assert after["launches"] - before["launches"] == 4  # GEMM + split-K sum, twice
    assert after["syncs"] > before["syncs"]


def test_binding_checks_raise_pyconv_error():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    shape = conv_shape(x, w, {})
    with pytest.raises(PyConvError, match="elements"):
        emu.conv2d_forward(x, w, None, torch.empty(1, 3, 3, 4), shape, "direct")
    with pytest.raises(PyConvError, match="aligned"):
        emu.lib.conv2d_forward("direct", "float32", tuple(shape), (x.data_ptr() + 1, x.numel()),
                                       (w.data_ptr(), w.numel()), None, (0, 0), 0)
    with pytest.raises(PyConvError, match="inconsistent"):
        emu.lib.conv2d_forward("direct", "float32", tuple(shape._replace(P=6)), (x.data_ptr(), x.numel()),
                                       (w.data_ptr(), w.numel()), None, (0, 0), 0)
    assert "fft" in emu.can_run("conv2d_forward", "fft", shape)


# ------------------------------------------------------------------------- Winograd F(m x m, 3 x 3) ---
# Forward and gradients of every algorithm against torch run in the shared testbed
# (tests/testbed.py, from tests/test_conv2d.py::test_table); here the emulator-specific checks.

def test_winograd_tile_choice_and_split_k():
    lib = emu.lib
    x, w = torch.randn(2, 3, 12, 12), torch.randn(4, 3, 3, 3)
    big, small = conv_shape(x, w, dict(padding=1)), conv_shape(x[:, :, :7, :7], w, dict(padding=1))
    wide = conv_shape(torch.randn(1, 3, 16, 17), w, dict(padding=1))
    # The binding takes the tile from pyconv.problem.winograd_tile: 4x4 from min(P, Q) >= 16 on.
    assert [winograd_tile("winograd", s) for s in (wide, big, small)] == [4, 2, 2]
    # forward 2x2: U 16*4*3 + V 16*3*72 + M 16*4*72; grad-weight: 2 splits of the 72 tiles; the
    # workspace holds (m+2)^2 positions.
    assert lib.conv2d_winograd_workspace(2, "forward", tuple(big)) == 16 * (4 * 3 + 3 * 72 + 4 * 72)
    assert lib.conv2d_winograd_workspace(2, "backward_weight", tuple(big)) == 16 * (2 * 4 * 3 + 3 * 72 + 4 * 72)
    assert lib.conv2d_winograd_workspace(4, "forward", tuple(big)) == 36 * (4 * 3 + 3 * 18 + 4 * 18)
    with pytest.raises(Exception, match="tile m must be 2 or 4"):
        lib.conv2d_winograd_workspace(3, "forward", tuple(big))
    gy = torch.randn(2, 4, 12, 12)
    outs = []
    for _ in range(2):
        gw = nan_like(w)
        emu.conv2d_backward_weight(x, gy, gw, None, big, "winograd_2x2")
        outs.append(gw)
    assert torch.equal(outs[0], outs[1])  # fixed-order split reduction


def test_winograd_no_bias_bias_grad_only_and_empty_batch():
    x, w = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    shape = conv_shape(x, w, {})
    y = nan_like(x, (2, 5, 4, 4))
    emu.conv2d_forward(x, w, None, y, shape, "winograd_4x4")
    assert_close(y, F.conv2d(x, w), torch.float64, "winograd output without bias")
    gy = torch.randn_like(y)
    gb = torch.full((5,), NAN, dtype=torch.float64)
    emu.conv2d_backward_weight(x, gy, None, gb, shape, "winograd")
    assert_close(gb, gy.sum((0, 2, 3)), torch.float64, "winograd grad_bias alone")
    # Every workspace element read is written first: a NaN-filled workspace changes nothing.
    lib, buf = emu.lib, (lambda t: (t.data_ptr(), t.numel()))  # noqa: E731
    for pass_, call in (("forward", lambda ws: lib.conv2d_winograd_forward(
                            4, "float64", tuple(shape), buf(x), buf(w), None, buf(y), buf(ws), 0)),
                        ("backward_weight", lambda ws: lib.conv2d_winograd_backward_weight(
                            4, "float64", tuple(shape), buf(x), buf(gy), buf(gw), None, buf(ws), 0))):
        ws = torch.full((lib.conv2d_winograd_workspace(4, pass_, tuple(shape)),), NAN,
                        dtype=torch.float64)
        y, gw = nan_like(y), nan_like(w)
        call(ws)
        if pass_ == "forward":
            assert_close(y, F.conv2d(x, w), torch.float64, "winograd output, NaN workspace")
        else:
            assert_close(gw, torch.nn.grad.conv2d_weight(x, w.shape, gy), torch.float64, "grad_weight, NaN workspace")
    x0 = x[:0]
    shape0 = conv_shape(x0, w, {})
    gw = nan_like(w)
    emu.conv2d_backward_weight(x0, torch.empty(0, 5, 4, 4, dtype=torch.float64), gw, None, shape0, "winograd")
    assert torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize("kw,why", [(dict(stride=2), "stride"), (dict(dilation=2), "dilation"),
                                    (dict(kernel=5), "3x3 kernel")])
def test_winograd_rejects_other_shapes(kw, why):
    kw = dict(kw)
    R = kw.pop("kernel", 3)
    x, w = torch.randn(1, 2, 9, 9), torch.randn(3, 2, R, R)
    shape = conv_shape(x, w, kw)
    y = torch.empty(1, 3, shape.P, shape.Q)
    for algo in ("winograd", "winograd_2x2", "winograd_4x4"):
        assert f"it needs {'a ' if why == '3x3 kernel' else ''}{why}" in emu.can_run("conv2d_forward", algo, shape)
        # the binding guards memory on its own, whoever calls the table
        with pytest.raises(PyConvError, match=f"cannot run this convolution: it needs .*{why}"):
            emu.conv2d_forward(x, w, None, y, shape, algo)
        with pytest.raises(PyConvError, match="cannot run this convolution"):
            emu.conv2d_backward_input(torch.randn_like(y), w, torch.empty_like(x), shape, algo)
        with pytest.raises(PyConvError, match="cannot run this convolution"):
            emu.conv2d_backward_weight(x, torch.randn_like(y), torch.empty_like(w), None, shape, algo)


def test_grid_limit_raises():
    # 70000 groups -> gridDim.z = 70000 > 65535: refused before launch, never truncated.
    x, w = torch.randn(1, 70000, 1, 1), torch.randn(70000, 1, 1, 1)
    shape = conv_shape(x, w, dict(groups=70000))
    with pytest.raises(PyConvError, match="grid dimension"):
        emu.conv2d_forward(x, w, None, torch.empty(1, 70000, 1, 1), shape, "im2col")


# ------------------------------------------------------------------------- the emulator itself ---
# Test-only kernels (csrc/cuda_emu/emu_selftest.cpp) pinning down the execution model it provides.

def test_emulator_barrier_and_shared_memory():
    out = emu.lib.selftest_reverse(3, 128)
    assert out == [float(b * 128 + 127 - t) for b in range(3) for t in range(128)]


def test_emulator_unwritten_shared_memory_reads_nan():
    assert all(v != v for v in emu.lib.selftest_unwritten_shared())


def test_emulator_exited_threads_leave_the_barrier():
    assert emu.lib.selftest_early_exit(64) == list(range(31, -1, -1))


def test_emulator_builtins():
    out = emu.lib.selftest_builtins(3, 2, 2, 5)
    rows = [tuple(out[i:i + 4]) for i in range(0, len(out), 4)]
    assert rows == [(bx, by, bz, t) for bz in range(2) for by in range(2) for bx in range(3) for t in range(5)]


def test_emulator_refuses_what_cuda_refuses():
    with pytest.raises(PyConvError, match="shared"):
        emu.lib.selftest_shared_overflow()
    with pytest.raises(PyConvError, match="invalid configuration"):
        emu.lib.selftest_launch(1, 1, 1, 2048)  # more than 1024 threads per block
    with pytest.raises(PyConvError, match="invalid configuration"):
        emu.lib.selftest_launch(1, 70000, 1, 32)  # gridDim.y > 65535


# ------------------------------------------------------------------------------------ pooling ---

POOL_CASES = [
    # (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
    (2, 3, 9, 11, 3, 2, 1, 1, False),
    (1, 2, 10, 7, (3, 2), (2, 1), (1, 0), 1, True),
    (1, 3, 12, 12, 3, 3, 1, 2, False),
    (2, 2, 5, 6, 2, None, 0, 1, True),
]


def pool_case(case, dtype, op):
    N, C, H, W, k, s, p, d, ceil = case
    x = torch.randn(N, C, H, W, dtype=dtype)
    dil = d if op == "max_pool2d" else 1
    shape = _args.pool2d_shape(x, k, s, p, dil, ceil, op)
    return x, dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil), dil, shape


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(case, dtype):
    table, device = emu, "cpu"
    x, kw, dil, shape = pool_case(case, dtype, "max_pool2d")
    xr = x.clone().requires_grad_()
    yr, ir = F.max_pool2d(xr, dilation=dil, return_indices=True, **{k: v for k, v in kw.items() if v is not None})
    gy = torch.randn_like(yr)
    (gxr,) = torch.autograd.grad(yr, xr, gy)
    x, gy = x.to(device), gy.to(device)
    y, idx, gx = nan_like(yr).to(device), torch.full(yr.shape, -7, dtype=torch.int64, device=device), nan_like(x).to(device)
    table.max_pool2d_forward(x, y, idx, shape)
    table.max_pool2d_backward(gy, idx, gx, shape)
    assert torch.equal(y.cpu(), yr.detach()) and torch.equal(idx.cpu(), ir)
    assert_close(gx.cpu(), gxr, dtype, "max_pool2d grad_input")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d(case, cip, div, dtype):
    table, device = emu, "cpu"
    x, kw, _, shape = pool_case(case, dtype, "avg_pool2d")
    xr = x.clone().requires_grad_()
    yr = F.avg_pool2d(xr, count_include_pad=cip, divisor_override=div, **{k: v for k, v in kw.items() if v is not None})
    gy = torch.randn_like(yr)
    (gxr,) = torch.autograd.grad(yr, xr, gy)
    x, gy = x.to(device), gy.to(device)
    y, gx = nan_like(yr).to(device), nan_like(x).to(device)
    table.avg_pool2d_forward(x, y, shape, cip, _args.divisor(div))
    table.avg_pool2d_backward(gy, gx, shape, cip, _args.divisor(div))
    assert_close(y.cpu(), yr.detach(), dtype, "avg_pool2d output")
    assert_close(gx.cpu(), gxr, dtype, "avg_pool2d grad_input")


# --------------------------------------------------------------------------------- batch norm ---

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", [(4, 3, 5, 7), (300, 2), (2, 5, 3)])
def test_batch_norm(size, affine, training, dtype):
    table, device = emu, "cpu"
    C = size[1]
    x = torch.randn(*size, dtype=dtype) * 3 + 1
    w = torch.randn(C, dtype=dtype) if affine else None
    b = torch.randn(C, dtype=dtype) if affine else None
    rm, rv = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    momentum, eps = 0.1, 1e-5
    leaves = [x.clone().requires_grad_()] + ([w.clone().requires_grad_(), b.clone().requires_grad_()] if affine else [])
    rm_ref, rv_ref = rm.clone(), rv.clone()
    yr = F.batch_norm(leaves[0], rm_ref, rv_ref, leaves[1] if affine else None, leaves[2] if affine else None,
                      training, momentum, eps)
    gy = torch.randn_like(yr)
    grads = torch.autograd.grad(yr, leaves, gy)
    shape = _args.batch_norm_shape(x, rm, rv, w, b, training, momentum, eps)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    x_d, w_d, b_d, rm_d, rv_d, gy_d = map(dev, (x, w, b, rm, rv, gy))
    y, sm, si = nan_like(x).to(device), torch.full((C,), NAN, dtype=dtype, device=device), torch.full((C,), NAN, dtype=dtype, device=device)
    table.batch_norm_forward(x_d, w_d, b_d, rm_d, rv_d, y, sm, si, shape, training, momentum, eps)
    assert_close(y.cpu(), yr.detach(), dtype, "batch_norm output")
    assert_close(rm_d.cpu(), rm_ref, dtype, "running_mean")
    assert_close(rv_d.cpu(), rv_ref, dtype, "running_var")
    gx = nan_like(x).to(device)
    gw = torch.full((C,), NAN, dtype=dtype, device=device) if affine else None
    gb = torch.full((C,), NAN, dtype=dtype, device=device) if affine else None
    table.batch_norm_backward(gy_d, x_d, w_d, sm, si, gx, gw, gb, shape, training)
    assert_close(gx.cpu(), grads[0], dtype, "batch_norm grad_input")
    if affine:
        assert_close(gw.cpu(), grads[1], dtype, "batch_norm grad_weight")
        assert_close(gb.cpu(), grads[2], dtype, "batch_norm grad_bias")


# ------------------------------------------------------------- conv-BN-ReLU fusion (issues #7, #10) ---
# ReLU kernels, batch norm with a fused ReLU / statistics from the conv epilogue / a ReLU-masked
# backward, and the conv forward that also writes per-channel sums of its output.

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("n", [1031, 3])
def test_relu(n, offset, dtype):
    # offset 1 shifts every buffer off the 16-byte boundary: the scalar (unvectorized) kernel runs.
    base = torch.randn(n + offset, dtype=dtype)
    base[offset] = NAN
    base[offset + 1] = 0.0
    base[offset + 2] = -0.0
    x = base[offset:]
    gz = torch.randn(n + offset, dtype=dtype)[offset:]
    expected = torch.relu(x)
    z = x.clone() if offset == 0 else torch.empty(n + offset, dtype=dtype)[offset:].copy_(x)
    emu.activation_forward(z, None, "relu")
    assert torch.equal(z.isnan(), expected.isnan()) and torch.equal(z.nan_to_num(), expected.nan_to_num())
    zl = x.clone().requires_grad_()
    (gref,) = torch.autograd.grad(torch.relu(zl), zl, gz)
    gx = torch.full((n + offset,), NAN, dtype=dtype)[offset:]
    emu.relu_backward(gz, z, gx)
    # torch masks on the input, threshold_backward on the output: equal except at NaN (z NaN -> gz).
    ref = torch.where(z.isnan(), gz, gref)
    assert torch.equal(gx, ref)


def bn_case(size, dtype, affine=True):
    C = size[1]
    x = torch.randn(*size, dtype=dtype) * 3 + 1
    w = torch.randn(C, dtype=dtype) if affine else None
    b = torch.randn(C, dtype=dtype) if affine else None
    return x, w, b, torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_relu_forward(affine, training, dtype):
    x, w, b, rm, rv = bn_case((3, 4, 5, 7), dtype, affine)
    if not training:
        x[1, 2, 3, 4] = NAN  # eval: statistics are constants, the NaN stays in its element
    rm_ref, rv_ref = rm.clone(), rv.clone()
    yr = torch.relu(F.batch_norm(x, rm_ref, rv_ref, w, b, training, 0.1, 1e-5))
    shape = _args.batch_norm_shape(x, rm, rv, w, b, training, 0.1, 1e-5)
    y, sm, si = nan_like(x), torch.full((4,), NAN, dtype=dtype), torch.full((4,), NAN, dtype=dtype)
    emu.batch_norm_forward(x, w, b, rm, rv, y, sm, si, shape, training, 0.1, 1e-5, relu=True)
    assert torch.equal(y.isnan(), yr.isnan())
    assert (y.nan_to_num() >= 0).all()
    assert_close(y.nan_to_num(), yr.nan_to_num(), dtype, "batch_norm+relu output")
    assert_close(rm, rm_ref, dtype, "running_mean")
    assert_close(rv, rv_ref, dtype, "running_var")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_relu_output(affine, training, dtype):
    x, w, b, rm, rv = bn_case((3, 4, 5, 7), dtype, affine)
    leaves = [x.clone().requires_grad_()] + ([w.clone().requires_grad_(), b.clone().requires_grad_()] if affine else [])
    zr = torch.relu(F.batch_norm(leaves[0], rm.clone(), rv.clone(), *(leaves[1:] if affine else (None, None)),
                                 training, 0.1, 1e-5))
    gz = torch.randn_like(zr)
    grads = torch.autograd.grad(zr, leaves, gz)
    shape = _args.batch_norm_shape(x, rm, rv, w, b, training, 0.1, 1e-5)
    z, sm, si = nan_like(x), torch.full((4,), NAN, dtype=dtype), torch.full((4,), NAN, dtype=dtype)
    emu.batch_norm_forward(x, w, b, rm, rv, z, sm, si, shape, training, 0.1, 1e-5, relu=True)
    gx = nan_like(x)
    gw, gb = (nan_like(w), nan_like(b)) if affine else (None, None)
    emu.batch_norm_backward(gz, x, w, sm, si, gx, gw, gb, shape, training, relu_output=z)
    assert_close(gx, grads[0], dtype, "grad_input through relu")
    if affine:
        assert_close(gw, grads[1], dtype, "grad_weight through relu")
        assert_close(gb, grads[2], dtype, "grad_bias through relu")


# Odd sizes: N*P*Q not a multiple of the 64-column tile, K above one 64-row tile (implicit GEMM
# only: the emulator is slow), groups; several direct-kernel parts per channel (800 outputs: 4 parts).
STATS_CASES = [
    (2, 3, 9, 11, 5, 3, 3, dict(padding=1)),
    (1, 16, 5, 13, 70, 1, 1, dict()),
    (2, 8, 7, 7, 12, 3, 3, dict(groups=4, padding=1, stride=2)),
    (2, 2, 20, 20, 5, 1, 1, dict()),
]


def conv_with_stats(algo, dtype, case):
    N, C, H, W, K, R, S, kw = case
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // kw.get("groups", 1), R, S, dtype=dtype)
    b = torch.randn(K, dtype=dtype) + 2  # a mean away from 0
    shape = conv_shape(x, w, kw)
    y = nan_like(x, (shape.N, shape.K, shape.P, shape.Q))
    stats = torch.full((2, K), NAN, dtype=torch.float64)
    emu.conv2d_forward(x, w, b, y, shape, algo, stats=stats)
    return x, w, b, shape, y, stats


@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd_2x2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", STATS_CASES, ids=lambda c: f"{c[:7]}{c[7]}")
def test_conv2d_forward_stats(case, dtype, algo):
    if case[4] == 70 and algo == "direct":
        pytest.skip("K=70: one block per channel for direct, nothing new but emulator time")
    if algo.startswith("winograd") and (case[5] != 3 or case[7].get("stride", 1) != 1 or dtype == torch.float64):
        pytest.skip("winograd: 3x3 stride 1 only; the statistics reduction after it is checked in float32")
    x, w, b, shape, y, stats = conv_with_stats(algo, dtype, case)
    y_plain = nan_like(y)
    emu.conv2d_forward(x, w, b, y_plain, shape, algo)
    assert torch.equal(y, y_plain), "the stats epilogue changed y"
    yd = y.double()
    expected = torch.stack([yd.sum((0, 2, 3)), (yd * yd).sum((0, 2, 3))])
    assert torch.allclose(stats, expected, rtol=1e-12, atol=1e-9), (stats - expected).abs().max()
    again = torch.full_like(stats, NAN)
    emu.conv2d_forward(x, w, b, nan_like(y), shape, algo, stats=again)
    assert torch.equal(again, stats), "stats are not bit-reproducible"


def test_conv2d_forward_stats_checks():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    shape = conv_shape(x, w, {})
    with pytest.raises(PyConvError, match="float64"):
        emu.conv2d_forward(x, w, None, torch.empty(1, 3, 3, 3), shape, "direct", stats=torch.empty(2, 3))
    with pytest.raises(PyConvError, match="elements"):
        emu.conv2d_forward(x, w, None, torch.empty(1, 3, 3, 3), shape, "im2col",
                           stats=torch.empty(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batch_norm_forward_with_conv_stats(algo, dtype):
    x, w, b, shape, y, stats = conv_with_stats(algo, dtype, STATS_CASES[0])
    K = shape.K
    bnw, bnb = torch.randn(K, dtype=dtype), torch.randn(K, dtype=dtype)
    rm, rv = torch.randn(K, dtype=dtype), torch.rand(K, dtype=dtype) + 0.5
    bshape = _args.batch_norm_shape(y, rm, rv, bnw, bnb, True, 0.1, 1e-5)
    outs = []
    for st in (None, stats):
        z, sm, si = nan_like(y), torch.full((K,), NAN, dtype=dtype), torch.full((K,), NAN, dtype=dtype)
        rm_k, rv_k = rm.clone(), rv.clone()
        emu.batch_norm_forward(y, bnw, bnb, rm_k, rv_k, z, sm, si, bshape, True, 0.1, 1e-5, stats=st)
        outs.append((z, sm, si, rm_k, rv_k))
    rm_ref, rv_ref = rm.clone(), rv.clone()
    zr = F.batch_norm(y, rm_ref, rv_ref, bnw, bnb, True, 0.1, 1e-5)
    for name, plain, fused, ref in zip(("output", "save_mean", "save_invstd", "running_mean", "running_var"),
                                       outs[0], outs[1], (zr, y.mean((0, 2, 3)), None, rm_ref, rv_ref)):
        assert_close(fused, plain, dtype, f"stats path vs statistics pass: {name}")
        if ref is not None:
            assert_close(fused, ref, dtype, f"stats path vs torch: {name}")
    with pytest.raises(PyConvError, match="training"):
        emu.batch_norm_forward(y, bnw, bnb, rm, rv, nan_like(y), outs[0][1], outs[0][2], bshape, False, 0.1, 1e-5,
                               stats=stats)


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_bn_relu_sequence(algo, dtype):
    """The cuda table's functions in the order of pyconv/ops/conv_bn_relu.py (training, the fused
    keywords) against torch's conv2d -> batch_norm -> relu autograd."""
    N, C, H, W, K, R, S, kw = (2, 3, 9, 11, 5, 3, 3, dict(padding=1, stride=(1, 2)))
    x, w, b = torch.randn(N, C, H, W, dtype=dtype), torch.randn(K, C, R, S, dtype=dtype), torch.randn(K, dtype=dtype)
    bnw, bnb = torch.randn(K, dtype=dtype), torch.randn(K, dtype=dtype)
    rm, rv = torch.randn(K, dtype=dtype), torch.rand(K, dtype=dtype) + 0.5
    leaves = [t.clone().requires_grad_() for t in (x, w, b, bnw, bnb)]
    rm_ref, rv_ref = rm.clone(), rv.clone()
    zr = torch.relu(F.batch_norm(F.conv2d(*leaves[:3], **kw), rm_ref, rv_ref, leaves[3], leaves[4], True, 0.1, 1e-5))
    gz = torch.randn_like(zr)
    grads = torch.autograd.grad(zr, leaves, gz)

    shape = conv_shape(x, w, kw)
    out = (shape.N, shape.K, shape.P, shape.Q)
    y, z = nan_like(x, out), nan_like(x, out)
    stats = torch.full((2, K), NAN, dtype=torch.float64)
    sm, si = torch.full((K,), NAN, dtype=dtype), torch.full((K,), NAN, dtype=dtype)
    emu.conv2d_forward(x, w, b, y, shape, algo, stats=stats)
    bshape = _args.BatchNormShape(shape.N, shape.K, shape.P * shape.Q)
    emu.batch_norm_forward(y, bnw, bnb, rm, rv, z, sm, si, bshape, True, 0.1, 1e-5, relu=True, stats=stats)
    gy, gbnw, gbnb = nan_like(z), nan_like(bnw), nan_like(bnb)
    emu.batch_norm_backward(gz, y, bnw, sm, si, gy, gbnw, gbnb, bshape, True, relu_output=z)
    gx, gw, gb = nan_like(x), nan_like(w), nan_like(b)
    emu.conv2d_backward_input(gy, w, gx, shape, algo)
    emu.conv2d_backward_weight(x, gy, gw, gb, shape, algo)

    assert_close(z, zr.detach(), dtype, "output")
    assert_close(rm, rm_ref, dtype, "running_mean")
    assert_close(rv, rv_ref, dtype, "running_var")
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bn_weight", "grad_bn_bias"),
                          (gx, gw, gbnw, gbnb), grads[:2] + grads[3:]):
        assert_close(a, e, dtype, name)
    # The conv bias gradient is sum gy per channel, zero up to rounding after a training-mode BN:
    # compared in absolute terms.
    assert torch.allclose(gb, grads[2], rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-10), (gb, grads[2])
