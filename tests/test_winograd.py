"""Winograd F(2x2,3x3) and F(4x4,3x3): float32 accuracy against a float64 reference on real 3x3
layers (unit-variance data), the shape rule, and algo='auto' choosing it. test_conv2d.py runs the
shared grid, hypothesis, gradcheck and layout tests on every winograd algo as well."""
import pytest
import torch
import torch.nn.functional as F

import pyconv.functional as PF
from pyconv import PyConvError, autotune
from pyconv._args import conv2d_params, conv2d_shape_of_sizes

# ResNet-18 / VGG-16 3x3 stride-1 layers, spatial sizes cut down for test time (C, K, H=W).
LAYERS = [
    ("resnet18.layer1", 64, 64, 14),
    ("resnet18.layer2", 128, 128, 14),
    ("resnet18.layer4", 512, 512, 7),
    ("vgg16.conv1_2", 64, 64, 16),
    ("vgg16.conv3_2", 256, 256, 10),
]
ALGOS = ["winograd_2x2", "winograd_4x4", "winograd"]
ERRORS = {}  # (layer, algo) -> errors, printed at the end with -s


def rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


def errors(algo, C, K, HW, N=2, seed=0, backend="auto"):
    """Norm-wise relative errors (forward, grad-input, grad-weight) of float32 `algo` against torch in
    float64 on unit-variance data; tests/test_numba_winograd.py runs it on the numba backend."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, HW, HW, generator=g, dtype=torch.float64)
    w = torch.randn(K, C, 3, 3, generator=g, dtype=torch.float64) / (3 * C ** 0.5)  # unit-variance output
    gy = torch.randn(N, K, HW, HW, generator=g, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    yr = F.conv2d(xr, wr, padding=1)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy)
    x32, w32 = x.float().requires_grad_(), w.float().requires_grad_()
    y = PF.conv2d(x32, w32, padding=1, algo=algo, backend=backend)
    gx, gw = torch.autograd.grad(y, (x32, w32), gy.float())
    return rel(y, yr.detach()), rel(gx, gxr), rel(gw, gwr)


@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_float32_accuracy_vs_float64(layer):
    name, C, K, HW = layer
    direct = errors("direct", C, K, HW)
    ERRORS[(name, "direct")] = direct
    for algo in ALGOS:
        fwd, gin, gwt = errors(algo, C, K, HW)
        ERRORS[(name, algo)] = (fwd, gin, gwt)
        print(f"{name:16s} {algo:13s} fwd {fwd:.2e} grad_in {gin:.2e} grad_w {gwt:.2e}   "
              f"(direct {direct[0]:.2e} {direct[1]:.2e} {direct[2]:.2e})")
        assert fwd <= 2e-5 and gin <= 2e-5, (algo, fwd, gin)
        # F(4x4) vs direct: measured 2.4-2.7x direct's error on these layers (F(2x2) is below direct).
        assert fwd <= 4 * direct[0] and gin <= 4 * direct[1], (algo, fwd, gin, direct)
        # grad-weight reduces over N*P*Q tiles: bound scales with the reduction length (oneDNN's rule).
        assert gwt <= 2e-7 * (2 * HW * HW) ** 0.5 * 8, (algo, gwt)


def shape_of(C, H, K, R, stride=1, padding=0, dilation=1, groups=1):
    return conv2d_shape_of_sizes((1, C, H, H), (K, C // groups, R, R), conv2d_params((R, R), stride, padding,
                                                                                 dilation, groups))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("kw,why", [(dict(R=5), "3x3"), (dict(stride=2), "stride 1"), (dict(dilation=2), "dilation 1")])
def test_unsupported_shapes_raise(algo, kw, why):
    kw = dict(kw)
    R = kw.pop("R", 3)
    x, w = torch.randn(1, 4, 12, 12), torch.randn(4, 4, R, R)
    with pytest.raises(PyConvError, match=rf"{algo}.*{why}"):
        PF.conv2d(x, w, algo=algo, **kw)


def test_auto_picks_winograd_for_3x3_stride1():
    s = shape_of(64, 14, 64, 3, padding=1)
    assert autotune.resolve_conv_algo("auto", s, "cpp").startswith("winograd")
    assert autotune.resolve_conv_algo("auto", shape_of(64, 14, 64, 3, stride=2, padding=1), "cpp") != "winograd"


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_asymmetric_same_padding_groups_and_tiny_outputs(algo, dtype):
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    for (N, C, H, W, K, kw) in [(2, 6, 1, 1, 4, dict(padding=1)), (1, 4, 3, 17, 6, dict(padding="same")),
                                (3, 12, 10, 9, 18, dict(padding=(0, 2), groups=3)), (1, 3, 5, 6, 2, dict(padding=3))]:
        g = kw.get("groups", 1)
        x = torch.randn(N, C, H, W, dtype=dtype, requires_grad=True)
        w = torch.randn(K, C // g, 3, 3, dtype=dtype, requires_grad=True)
        b = torch.randn(K, dtype=dtype, requires_grad=True)
        y, yr = PF.conv2d(x, w, b, algo=algo, **kw), F.conv2d(x, w, b, **kw)
        gy = torch.randn_like(yr)
        for a, e in zip((y,) + torch.autograd.grad(y, (x, w, b), gy), (yr,) + torch.autograd.grad(yr, (x, w, b), gy)):
            assert rel(a, e.double()) <= tol


def _check_against_torch(algo, dtype, C, cases, threads=(1, 3)):
    """Forward, grad-input and grad-weight of `algo` against torch on (N, H, W, K, conv kwargs)."""
    import pyconv
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    g = torch.Generator().manual_seed(5)
    before = pyconv.get_num_threads()
    try:
        for n in threads:
            pyconv.set_num_threads(n)
            for (N, H, W, K, kw) in cases:
                groups = kw.get("groups", 1)
                x = torch.randn(N, groups * C, H, W, generator=g, dtype=dtype).requires_grad_()
                w = (torch.randn(K, C, 3, 3, generator=g, dtype=dtype) / (3 * C ** 0.5)).requires_grad_()
                b = torch.randn(K, generator=g, dtype=dtype)
                y, yr = PF.conv2d(x, w, b, algo=algo, backend="cpp", **kw), F.conv2d(x, w, b, **kw)
                gy = torch.randn(yr.shape, generator=g, dtype=dtype)
                got, ref = torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(yr, (x, w), gy)
                for a, e in zip((y,) + got, (yr,) + ref):
                    assert rel(a, e.double()) <= tol, (n, N, H, W, K, kw)
    finally:
        pyconv.set_num_threads(before)


# winograd.cpp runs the products position by position where the tile blocks are too few for the
# threads (at most 2 per thread: these few-tile calls, with wide channels so that blocks are 16
# tiles) or the transformed filters pass 12 MiB per group (kStreamedFilterBytes, below).
@pytest.mark.parametrize("algo,C,dtype", [("winograd_2x2", 208, torch.float32), ("winograd_4x4", 136, torch.float32),
                                          ("winograd_2x2", 136, torch.float64), ("winograd_4x4", 92, torch.float64)])
def test_few_tile_blocks_by_position(algo, C, dtype):
    _check_against_torch(algo, dtype, C, [(1, 7, 7, C + 3, dict(padding=1)), (3, 9, 5, C, dict(padding=(0, 2))),
                                          (2, 6, 6, 2 * C, dict(padding=1, groups=2))])


def test_streamed_filters_by_position_over_several_spans():
    """Transformed filters over 12 MiB (F(2x2) float64 at 320 channels: 13 MiB; F(4x4) float32 at 300:
    13 MiB) and more tiles than one span holds (8 MiB of V and M: 96 tiles here)."""
    _check_against_torch("winograd_2x2", torch.float64, 320, [(1, 20, 20, 320, dict(padding=1))], threads=(2,))
    _check_against_torch("winograd_4x4", torch.float32, 300, [(1, 44, 44, 300, dict(padding=1))], threads=(2,))


# (x size, weight size, groups, dtype): grad-weight's two schedules. Slots: 10 channels (a partial V
# row block), 7 per group (a partial Z row block); 3 groups of 5 F(2x2) blocks = 15 blocks in 8 slots,
# so slots start and end inside groups and cross from one group to the next. Shared: float64 F(4x4)
# at 120 channels, two blocks whose dU copies would pass the slots' memory bound. Few tiles (CIFAR's
# 64-channel 8x8 layers): F(4x4)'s 32 tiles in blocks of 16, fewer than a panel (NR) of AVX-512.
# Groups of at most a vector of input channels take the narrow W x W panels (the first two, and
# CIFAR's 16-channel layer on AVX-512); one block of 4 tiles puts a narrow plan on the shared schedule.
GRAD_WEIGHT_SCHEDULES = [((3, 10, 13, 11), (14, 5, 3, 3), 2, torch.float32),
                         ((2, 12, 16, 18), (15, 4, 3, 3), 3, torch.float32),
                         ((2, 120, 10, 10), (120, 120, 3, 3), 1, torch.float64),
                         ((8, 40, 8, 8), (36, 40, 3, 3), 1, torch.float32),  # few tiles: blocks under a panel
                         ((8, 16, 32, 32), (16, 16, 3, 3), 1, torch.float32),
                         ((1, 6, 8, 8), (21, 6, 3, 3), 1, torch.float32),
                         ((1, 6, 8, 8), (21, 6, 3, 3), 1, torch.float64)]


@pytest.mark.parametrize("algo", ["winograd_2x2", "winograd_4x4"])
@pytest.mark.parametrize("xs,ws,groups,dtype", GRAD_WEIGHT_SCHEDULES)
def test_grad_weight_bitwise_equal_across_thread_counts(algo, xs, ws, groups, dtype):
    """The grad-weight reduction over tiles sums its blocks in an order fixed by the problem, not the
    thread count (slots: fixed runs of blocks, added in order; shared: block by block), so the result
    is bitwise equal for 1, 2 and 3 threads."""
    import pyconv
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*xs, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(*ws, generator=g, dtype=dtype).requires_grad_()
    gy = torch.randn(xs[0], ws[0], xs[2], xs[3], generator=g, dtype=dtype)
    before = pyconv.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            pyconv.set_num_threads(n)
            y = PF.conv2d(x, w, padding=1, groups=groups, algo=algo, backend="cpp")
            grads.append(torch.autograd.grad(y, w, gy)[0])
    finally:
        pyconv.set_num_threads(before)
    ref = torch.autograd.grad(F.conv2d(x.double(), w.double(), padding=1, groups=groups), w, gy.double())[0]
    assert rel(grads[0], ref) < (1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_alias_tile_follows_outputs_and_tiles():
    """'winograd' takes F(4x4) from 16x16 outputs, or from WINOGRAD_MIN_TILES4 4x4 tiles a call
    (WINOGRAD_SMALL_FILTER_MIN_TILES4 for filters up to 128 x 128 channels a group,
    WINOGRAD_PREPARED_MIN_TILES4 with prepared filters), else F(2x2); the named variants are fixed."""
    from pyconv.problem import ConvShape, winograd_tile

    def shape(N, hw, C=256, G=1):
        return ConvShape(N, C, hw, hw, C, 3, 3, hw, hw, G, 1, 1, 1, 1, 1, 1)
    assert [winograd_tile("winograd", shape(n, 8, C=64)) for n in (4, 8)] == [2, 4]  # 16, 32 tiles
    assert [winograd_tile("winograd", shape(8, 8, C=c)) for c in (128, 129)] == [4, 2]
    assert winograd_tile("winograd", shape(8, 8, C=512, G=4)) == 4  # 128 x 128 a group
    assert winograd_tile("winograd", shape(1, 16)) == 4
    assert [winograd_tile("winograd", shape(n, 14)) for n in (1, 2, 8)] == [2, 2, 4]  # 16, 32, 128 tiles
    assert winograd_tile("winograd", shape(8, 10)) == 2  # 72 tiles
    assert [winograd_tile("winograd", shape(n, 14), prepared=True) for n in (1, 2)] == [4, 4]  # 16, 32 tiles
    assert [winograd_tile("winograd", shape(n, 12), prepared=True) for n in (1, 2)] == [2, 4]  # 9, 18
    assert winograd_tile("winograd_2x2", shape(8, 32)) == 2 and winograd_tile("winograd_4x4", shape(1, 4)) == 4
