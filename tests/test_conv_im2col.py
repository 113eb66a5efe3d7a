"""im2col + GEMM against the direct algorithm on real network layers (forward and both gradients),
and the im2col-specific entry points: 1x1 fast path, workspace report, checks at the binding."""
import numpy as np
import pytest
import torch

import pyconv
import pyconv.functional as PF
from pyconv import _C
from checks import assert_close
from problems import REAL_LAYERS


def _run(algo, x, w, b, gy, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = PF.conv2d(*leaves, algo=algo, backend="cpp", **kw)
    return (y, *torch.autograd.grad(y, leaves, gy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layer", REAL_LAYERS, ids=[layer[0] for layer in REAL_LAYERS])
def test_im2col_agrees_with_direct(layer, dtype):
    _, N, C, H, W, K, R, S, stride, padding, groups = layer
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // groups, R, S, dtype=dtype)
    b = torch.randn(K, dtype=dtype)
    kw = dict(stride=stride, padding=padding, groups=groups)
    gy = torch.randn_like(PF.conv2d(x, w, b, algo="direct", backend="cpp", **kw))
    got = _run("im2col", x, w, b, gy, **kw)
    want = _run("direct", x, w, b, gy, **kw)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, want):
        err = ((a.double() - e.double()).norm() / e.double().norm()).item()
        assert err < tol, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("N,H,W", [(1, 1, 1), (3, 5, 7), (2, 9, 9)])
def test_pointwise_batches_across_images(N, H, W):
    # 1x1 convolutions run the GEMM straight on x, whose columns jump from image to image.
    x = torch.randn(N, 19, H, W, dtype=torch.float64)
    w = torch.randn(13, 19, 1, 1, dtype=torch.float64)
    gy = torch.randn(N, 13, H, W, dtype=torch.float64)
    b = torch.randn(13, dtype=torch.float64)
    got = _run("im2col", x, w, b, gy)
    want = _run("direct", x, w, b, gy)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("S,stride,dilation,W", [(3, 2, 1, 40), (3, 2, 1, 32), (5, 1, 2, 45), (17, 2, 1, 60),
                                                  (17, 1, 1, 23), (3, 1, 1, 9)],
                         ids=["s2-wide", "s2-row-of-16", "dilated", "untabled-s2", "untabled-s1", "short-rows"])
def test_grad_weight_edge_masks(S, stride, dilation, W, dtype):
    """grad-weight's transposed pack builds its edge masks once per filter column offset (up to 16
    offsets; wider filters per column): rows with whole chunks inside, rows that are all edge, and
    filters past the table, against torch."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, W, dtype=dtype)
    w = torch.randn(6, 5, 3, S, dtype=dtype)
    kw = dict(stride=(1, stride), padding=(1, S // 2 * dilation), dilation=(1, dilation))
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = torch.nn.functional.conv2d(xl, wl, **kw)
    gy = torch.randn_like(y)
    want, = torch.autograd.grad(y, wl, gy)
    wg = w.clone().requires_grad_()
    got, = torch.autograd.grad(PF.conv2d(x, wg, algo="im2col", backend="cpp", **kw), wg, gy)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,H,W", [(70, 1, 1), (3, 7, 7), (2, 5, 3), (1, 40, 40)],
                         ids=["runs-past-the-limit", "7x7", "odd-plane", "one-image"])
def test_pointwise_chunks_packed_row_by_row(N, H, W, dtype):
    """Wide enough (>= 16 M panels) that gemm_run packs each N chunk ahead, row by row
    (BatchedPackB.chunk): runs crossing images, a last panel with lanes past the matrix, more runs
    than it tables (one pixel per image: panel by panel), forward and both gradients."""
    torch.manual_seed(0)
    x = torch.randn(N, 104, H, W, dtype=dtype)
    w = torch.randn(100, 104, 1, 1, dtype=dtype)
    b = torch.randn(100, dtype=dtype)
    gy = torch.randn(N, 100, H, W, dtype=dtype)
    got = _run("im2col", x, w, b, gy)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = torch.nn.functional.conv2d(*leaves)
    want = (y, *torch.autograd.grad(y, leaves, gy))
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * float(e.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N,C,H,W,K", [(2, 16, 105, 101, 100), (1, 27, 240, 239, 37)], ids=["16-to-100", "27-to-37"])
def test_short_reduction_into_a_large_output(N, C, H, W, K, dtype):
    """A 1x1 layer with a reduction of at most 32 channels into an output of at least 8 MiB runs the
    GEMM with its M panels outer (kRowsOuterMaxK in cpu/gemm_driver.h): every tile, the last
    M panel's and the last N panel's partial ones included, with the bias, and the batch-norm
    statistics of a fused training forward (prepared weights: the same order from A panels made
    ahead)."""
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w, b = torch.randn(K, C, 1, 1, dtype=dtype), torch.randn(K, dtype=dtype)
    assert K * N * H * W * 4 >= 8 << 20
    want = torch.nn.functional.conv2d(x, w, b)
    assert_close(PF.conv2d(x, w, b, algo="im2col", backend="cpp"), want, dtype, "output")
    with torch.inference_mode():
        got = pyconv.prepare(w, b, algo="im2col", backend="cpp")(x)
    assert_close(got, want, dtype, "prepared output")
    gamma, beta = torch.rand(K, dtype=dtype) + 0.5, torch.randn(K, dtype=dtype)
    rm, rv = torch.zeros(K, dtype=dtype), torch.ones(K, dtype=dtype)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    z = PF.conv_bn_relu(x, w, b, gamma, beta, rm, rv, training=True, algo="im2col", backend="cpp")
    z_ref = torch.nn.functional.relu(torch.nn.functional.batch_norm(want, rm_ref, rv_ref, gamma, beta, training=True))
    assert_close(z, z_ref, dtype, "output", kind="batch_norm")
    assert_close(rm, rm_ref, dtype, "running_mean", kind="batch_norm")
    assert_close(rv, rv_ref, dtype, "running_var", kind="batch_norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("W,S,pad,dil", [
    (1, 1, 0, 1), (3, 5, 2, 1), (7, 3, 1, 1), (13, 7, 3, 1), (17, 3, 1, 2), (16, 1, 0, 1),
    (33, 4, 3, 1), (40, 5, 0, 2), (2, 9, 4, 1),
])
def test_panel_edges(dtype, stride, W, S, pad, dil):
    # The forward packs panels of x with masked vector loads (stride 1 and 2), the grad-weight packs
    # transposed panels: runs that cross rows and images, columns in the padding on either side, rows
    # shorter than a vector, the first and last element of x, tap panels narrower than NR, and more
    # runs x taps than the masks hold (scalar path).
    torch.manual_seed(W * 100 + S * 10 + stride)
    x = torch.randn(3, 5, 4, W, dtype=dtype)
    w = torch.randn(6, 5, 2, S, dtype=dtype)
    if (W + 2 * pad - dil * (S - 1) - 1) < 0:
        pytest.skip("empty output")
    kw = dict(stride=stride, padding=(1, pad), dilation=(1, dil))
    wg, wt = w.clone().requires_grad_(), w.clone().requires_grad_()
    got = PF.conv2d(x, wg, algo="im2col", backend="cpp", **kw)
    want = torch.nn.functional.conv2d(x, wt, **kw)
    gy = torch.randn_like(want)
    got.backward(gy)
    want.backward(gy)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(wg.grad, wt.grad, rtol=tol, atol=tol * 10)


def test_workspace_bytes():
    s = _C.ConvShape(8, 64, 56, 56, 64, 3, 3, 56, 56, 1, 1, 1, 1, 1, 1, 1)
    fwd = _C.conv_im2col_workspace_bytes(s, "float32", 0)
    full_col = 64 * 9 * 8 * 56 * 56 * 4
    assert 0 < fwd < full_col // 10  # implicit im2col: panels only, no column matrix
    # stride 1: the implicit packer over gy, panels only; strided: dcol a few images at a time
    assert 0 < _C.conv_im2col_workspace_bytes(s, "float32", 1) < full_col // 10
    s2 = _C.ConvShape(8, 64, 56, 56, 64, 3, 3, 28, 28, 1, 2, 2, 1, 1, 1, 1)
    per_image = 64 * 9 * 28 * 28 * 4  # dcol of one image: chunks of two under the 4 MiB cap
    assert _C.conv_im2col_workspace_bytes(s2, "float32", 1) <= 2 * per_image + fwd * 4
    with pytest.raises(pyconv.PyConvError):
        _C.conv_im2col_workspace_bytes(s, "float16", 0)


def test_binding_checks_buffers():
    s = _C.ConvShape(1, 2, 5, 5, 3, 3, 3, 3, 3, 1, 1, 1, 0, 0, 1, 1)
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(pyconv.PyConvError, match="elements"):
        _C.conv_im2col_forward(s, x, w, None, np.zeros((1, 3, 3, 2), np.float32))
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        _C.conv_im2col_forward(s, x, w.astype(np.float64), None, np.zeros((1, 3, 3, 3), np.float32))
    with pytest.raises(pyconv.PyConvError, match="elements"):
        _C.conv_im2col_backward_input(s, np.zeros((1, 3, 3, 3), np.float32), w, np.zeros((1, 2, 5, 4), np.float32))
    with pytest.raises(pyconv.PyConvError, match="elements"):
        _C.conv_im2col_backward_weight(s, x, np.zeros((1, 3, 3, 3), np.float32), np.zeros(5, np.float32), None)


# Grad-input of a stride-1 layer with 16+ input channels per group runs per phase of gx (one phase);
# strided layers and fewer channels run through a dcol buffer and col2im. Both paths: dilation
# sharing a factor with the stride, negative effective padding, rows past the last output.
@pytest.mark.parametrize("cg", [3, 16], ids=["dcol", "phases"])
@pytest.mark.parametrize("R,S,kw", [
    (1, 1, dict(stride=2)),
    (1, 1, dict(stride=3, padding=1)),
    (3, 3, dict(stride=2, padding=1, dilation=2)),
    (3, 3, dict(stride=(2, 3), padding=(0, 2))),
    (3, 3, dict(padding=3)),
    (5, 3, dict(stride=2, padding=2, dilation=(2, 1), groups=2)),
    (7, 7, dict(stride=2, padding=3)),
    (2, 2, dict(stride=3)),
])
def test_grad_input_paths(cg, R, S, kw):
    torch.manual_seed(0)
    g = kw.get("groups", 1)
    x = torch.randn(2, cg * g, 11, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4 * g, cg, R, S, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, **kw)
    gy = torch.randn_like(y)
    want, = torch.autograd.grad(y, x, gy)
    x2 = x.detach().clone().requires_grad_()
    got, = torch.autograd.grad(PF.conv2d(x2, w, algo="im2col", backend="cpp", **kw), x2, gy)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R,st,pad", [(3, 2, 1), (5, 2, 2), (4, 3, 0)])
def test_grad_input_strided_phases(R, st, pad):
    # A strided layer whose single image's dcol passes 64 MiB takes the phase GEMMs (the classes of
    # h mod stride, with different tap counts) instead of buffering it.
    torch.manual_seed(0)
    P = 724 // R + 1  # float64 dcol of one image: 16*R*R*P*P*8 bytes > 64 MiB (x: 16*(st*P)^2*8 bytes)
    H = st * P + R
    x = torch.randn(1, 16, H, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 16, R, R, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, stride=st, padding=pad)
    assert 16 * R * R * y.shape[2] * y.shape[3] * 8 > 64 * 2**20
    gy = torch.randn_like(y)
    want, = torch.autograd.grad(y, x, gy)
    x2 = x.detach().clone().requires_grad_()
    got, = torch.autograd.grad(PF.conv2d(x2, w, stride=st, padding=pad, algo="im2col", backend="cpp"), x2, gy)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# Grad-weight GEMMs with a small output and a long reduction (N*P*Q >= 4 K blocks a thread, at 1-3 threads) run the
# K-split schedule: each thread sums its own K blocks, the copies are added in thread order.
SPLIT_K_LAYERS = [  # N, C, H, W, K, R, S, stride, padding, groups
    (6, 3, 56, 55, 16, 7, 7, 2, 3, 1),     # a stem: stride 2, 7x7, 3 input channels
    (4, 16, 40, 40, 24, 1, 1, 1, 0, 1),    # a pointwise expansion
    (4, 12, 33, 35, 18, 3, 3, 1, 1, 2),    # grouped 3x3, odd sizes, edges of every panel
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layer", SPLIT_K_LAYERS, ids=["stem", "pointwise", "grouped"])
def test_split_k_grad_weight_matches_torch(layer, dtype, threads):
    N, C, H, W, K, R, S, stride, padding, groups = layer
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, requires_grad=True)
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(threads)
        y = PF.conv2d(x, w, stride=stride, padding=padding, groups=groups, algo="im2col", backend="cpp")
        gy = torch.randn_like(y)
        (gw,) = torch.autograd.grad(y, w, gy)
        (gw2,) = torch.autograd.grad(PF.conv2d(x, w, stride=stride, padding=padding, groups=groups, algo="im2col",
                                               backend="cpp"), w, gy)
    finally:
        pyconv.set_num_threads(before)
    (ref,) = torch.autograd.grad(torch.nn.functional.conv2d(x.double(), w.double(), stride=stride, padding=padding,
                                                            groups=groups), w, gy.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert float((gw.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    assert torch.equal(gw, gw2)  # the same sums in the same order at a fixed thread count
