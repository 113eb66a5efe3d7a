"""The fused conv_bn_relu op and ConvBNReLU2d against torch's conv2d -> batch_norm -> relu."""
import math

import pytest
import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF
import pyconv.nn as PN
from conftest import conv_impls

IMPLS = [impl for impl in conv_impls() if impl[1] in ("direct", "im2col", "winograd")]


def _data(dtype, C=4, K=6, groups=2):
    torch.manual_seed(0)
    return dict(x=torch.randn(2, C, 9, 9, dtype=dtype), w=torch.randn(K, C // groups, 3, 3, dtype=dtype),
                b=torch.randn(K, dtype=dtype), g=torch.rand(K, dtype=dtype) + 0.5, be=torch.randn(K, dtype=dtype),
                rm=torch.randn(K, dtype=dtype), rv=torch.rand(K, dtype=dtype) + 0.5)


def _rel(a, e):
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend,algo", IMPLS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("conv", [dict(stride=1, padding=1, groups=1), dict(stride=2, padding=1, groups=2)])
@pytest.mark.parametrize("act", ["relu", "none", "relu6"], ids=["relu", "no_relu", "relu6"])
def test_matches_torch(backend, algo, training, dtype, conv, act):
    if algo == "winograd" and conv["stride"] != 1:
        pytest.skip("winograd needs stride 1")
    if act == "relu6" and not pyconv.backends.load(backend).clipped_bn_relu:
        pytest.skip(f"{backend} does not fuse ReLU6 (test_relu6_needs_a_clipping_backend)")
    d = _data(dtype, groups=conv["groups"])
    if act == "relu6":  # BN outputs on both sides of 0 and of 6
        d["be"] = d["be"] * 4 + 3
    leaves = [d[k].clone().requires_grad_() for k in ("x", "w", "b", "g", "be")]
    refs = [d[k].clone().requires_grad_() for k in ("x", "w", "b", "g", "be")]
    rm, rv, rm_ref, rv_ref = d["rm"].clone(), d["rv"].clone(), d["rm"].clone(), d["rv"].clone()
    st, pad, gr = conv["stride"], conv["padding"], conv["groups"]
    z = PF.conv_bn_relu(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], rm, rv, st, pad, 1, gr, training,
                        0.1, 1e-5, activation=act, algo=algo, backend=backend)
    zr = F.batch_norm(F.conv2d(refs[0], refs[1], refs[2], st, pad, 1, gr), rm_ref, rv_ref, refs[3], refs[4],
                      training, 0.1, 1e-5)
    zr = {"relu": F.relu, "relu6": F.relu6, "none": lambda t: t}[act](zr)
    if act == "relu6":
        assert (zr == 6).any() and (zr == 0).any() and ((zr > 0) & (zr < 6)).any()
    tol = 1e-9 if dtype == torch.float64 else (2e-4 if algo == "winograd" else 5e-5)
    assert _rel(z, zr) < tol
    torch.testing.assert_close(rm, rm_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(rv, rv_ref, rtol=tol, atol=tol)
    gz = torch.randn_like(zr)
    got = torch.autograd.grad(z, leaves, gz)
    want = torch.autograd.grad(zr, refs, gz)
    for name, a, e in zip(("x", "w", "b", "bn_weight", "bn_bias"), got, want):
        if name == "b" and training:
            # BN removes the conv bias: its gradient is zero up to rounding in both
            assert a.abs().max() < 1e-3 * max(1.0, gz.abs().sum().item() * 1e-3)
            continue
        assert _rel(a, e) < tol * 10, name


def test_nan_propagates_through_relu():
    d = _data(torch.float32, groups=1)
    d["x"][0, 0, 4, 4] = float("nan")
    z = PF.conv_bn_relu(d["x"], d["w"], None, d["g"], d["be"], d["rm"].clone(), d["rv"].clone(), 1, 1,
                        training=False)
    zr = F.relu(F.batch_norm(F.conv2d(d["x"], d["w"], None, 1, 1), d["rm"], d["rv"], d["g"], d["be"], False))
    assert torch.equal(torch.isnan(z), torch.isnan(zr))


@pytest.mark.parametrize("act", ["relu", "none", "relu6"])
def test_gradcheck_float64(act):
    d = _data(torch.float64)
    if act == "relu6":  # outputs above 6 too
        d["be"] = d["be"] * 4 + 3
    args = [d[k][:1, :, :6, :6].clone().requires_grad_() if k == "x" else d[k].clone().requires_grad_()
            for k in ("x", "w", "b", "g", "be")]

    def f(x, w, b, g, be):
        return PF.conv_bn_relu(x, w, b, g, be, d["rm"].clone(), d["rv"].clone(), 1, 1, 1, 2, True, activation=act,
                               backend="cpp")
    if act == "relu6":
        assert (f(*args) == 6).any()
    assert torch.autograd.gradcheck(f, args, atol=1e-6)


def test_opcheck():
    d = _data(torch.float32)
    args = (d["x"].requires_grad_(), d["w"].requires_grad_(), d["b"], d["g"].requires_grad_(), d["be"], d["rm"],
            d["rv"], [1, 1], [1, 1, 1, 1], [1, 1], 2, True, 0.1, 1e-5, "relu", "direct", "cpp")
    for act in ("relu", "none", "relu6"):
        torch.library.opcheck(torch.ops.pyconv.conv_bn_relu.default, args[:14] + (act,) + args[15:])


def test_relu6_needs_a_clipping_backend(monkeypatch):
    """activation='relu6' runs where the backend fuses it (Backend.clipped_bn_relu); elsewhere the op
    refuses it by name, and FusedConv keeps conv -> BN fused with torch's relu6 after it."""
    d = _data(torch.float32)
    with pytest.raises(pyconv.PyConvError, match="relu6.*clipped_bn_relu"):
        monkeypatch.setattr(pyconv.backends.load("cpp"), "clipped_bn_relu", False)
        PF.conv_bn_relu(d["x"], d["w"], None, d["g"], d["be"], d["rm"].clone(), d["rv"].clone(), 1, 1, 1, 2,
                        activation="relu6", backend="cpp")
    with pytest.raises(pyconv.PyConvError, match="activation='gelu'"):
        PF.conv_bn_relu(d["x"], d["w"], None, d["g"], d["be"], d["rm"].clone(), d["rv"].clone(), 1, 1, 1, 2,
                        activation="gelu", backend="cpp")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", ["relu", "none", "relu6"])
def test_residual_tail_matches_torch(training, dtype, act):
    """act(batch_norm(conv2d(x)) + residual) in one op (cpp: Backend.residual_bn): output, running
    statistics and every gradient, the residual's included, against torch's unfused chain."""
    d = _data(dtype, groups=1)
    d["be"] = d["be"] * 3 + 1  # outputs on both sides of 0 (and of 6)
    res = torch.randn(2, 6, 9, 9, dtype=dtype) * 3
    leaves = [t.clone().requires_grad_() for t in (d["x"], d["w"], d["b"], d["g"], d["be"], res)]
    refs = [t.clone().requires_grad_() for t in (d["x"], d["w"], d["b"], d["g"], d["be"], res)]
    rm, rv, rm_ref, rv_ref = d["rm"].clone(), d["rv"].clone(), d["rm"].clone(), d["rv"].clone()
    z = PF.conv_bn_relu(*leaves[:5], rm, rv, 1, 1, training=training, activation=act, residual=leaves[5],
                        backend="cpp")
    zr = F.batch_norm(F.conv2d(refs[0], refs[1], refs[2], 1, 1), rm_ref, rv_ref, refs[3], refs[4], training) + refs[5]
    zr = {"relu": F.relu, "relu6": F.relu6, "none": lambda t: t}[act](zr)
    tol = 1e-9 if dtype == torch.float64 else 5e-5
    assert _rel(z, zr) < tol
    torch.testing.assert_close(rm, rm_ref, rtol=tol, atol=tol)
    gz = torch.randn_like(zr)
    for name, a, e in zip(("x", "w", "b", "bn_weight", "bn_bias", "residual"), torch.autograd.grad(z, leaves, gz),
                          torch.autograd.grad(zr, refs, gz)):
        if name == "b" and training:
            continue  # BN removes the conv bias (zero up to rounding in both)
        assert _rel(a, e) < tol * 10, name


def test_residual_tail_gradcheck_and_refusals(monkeypatch):
    d = _data(torch.float64, groups=1)
    res = torch.randn(1, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    args = [d["x"][:1, :, :6, :6].clone().requires_grad_()] + [d[k].clone().requires_grad_()
                                                               for k in ("w", "b", "g", "be")]

    def f(x, w, b, g, be, r):
        return PF.conv_bn_relu(x, w, b, g, be, d["rm"].clone(), d["rv"].clone(), 1, 1, residual=r, backend="cpp")
    assert torch.autograd.gradcheck(f, args + [res], atol=1e-6)
    with pytest.raises(pyconv.PyConvError, match="residual: expected"):
        f(*[a.detach() for a in args], torch.zeros(1, 6, 5, 6, dtype=torch.float64))
    monkeypatch.setattr(pyconv.backends.load("cpp"), "residual_bn", False)
    with pytest.raises(pyconv.PyConvError, match="residual.*Backend.residual_bn"):
        f(*[a.detach() for a in args], res.detach())


@pytest.mark.parametrize("fused", [True, False])
def test_resnet_block_tail_fused_or_not_trains_like_torch(monkeypatch, fused):
    """A converted residual block (its last conv -> BN, + identity, ReLU) trains like torch's with the
    add and ReLU in the batch-norm kernels (cpp) and without them (torch's add and relu after)."""
    import copy
    from pyconv.bench.models import cifar_resnet20
    monkeypatch.setattr(pyconv.backends.load("cpp"), "residual_bn", fused)
    torch.manual_seed(3)
    m = cifar_resnet20().double()
    p = pyconv.convert(copy.deepcopy(m))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    z, zr = p(x), m(x)
    assert torch.allclose(z, zr, rtol=1e-9, atol=1e-9)
    z.square().sum().backward()
    zr.square().sum().backward()
    for (n, a), b in zip(p.named_parameters(), m.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-9), n


@pytest.mark.parametrize("clipping", [True, False])
def test_mobilenet_block_relu6_fused_or_not_matches_torch(monkeypatch, clipping):
    """A converted Conv2d -> BatchNorm2d -> ReLU6 trains like torch's with ReLU6 in the batch-norm
    kernels (cpp) and without (torch's relu6 after the fused conv -> BN)."""
    import copy
    monkeypatch.setattr(pyconv.backends.load("cpp"), "clipped_bn_relu", clipping)
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6())
    with torch.no_grad():
        m[1].bias.uniform_(-3, 9)  # outputs on both sides of 0 and 6
    p = pyconv.convert(copy.deepcopy(m))
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    z, zr = p(x), m(xr)
    assert torch.allclose(z, zr, rtol=1e-4, atol=1e-4)
    gz = torch.randn_like(zr)
    z.backward(gz)
    zr.backward(gz)
    assert torch.allclose(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
    for a, b in zip(p.parameters(), m.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_layer_matches_torch_sequence(momentum):
    torch.manual_seed(1)
    conv, bn = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8, momentum=momentum)
    ref = torch.nn.Sequential(conv, bn, torch.nn.ReLU())
    ours = PN.ConvBNReLU2d(3, 8, 3, padding=1, momentum=momentum)
    ours.load_state_dict({"conv.weight": conv.weight.detach().clone(),
                          **{f"bn.{k}": v.clone() for k, v in bn.state_dict().items()}})
    for _ in range(3):
        x = torch.randn(2, 3, 10, 10)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bn.running_var, bn.running_var)
    assert int(ours.bn.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 10, 10)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_empty_batch_and_unbatched():
    d = _data(torch.float32, groups=1)
    rm, rv = d["rm"].clone(), d["rv"].clone()
    z = PF.conv_bn_relu(torch.randn(0, 4, 9, 9), d["w"], None, d["g"], d["be"], rm, rv, 1, 1)
    assert z.shape == (0, 6, 9, 9) and torch.equal(rm, d["rm"])
    z = PF.conv_bn_relu(d["x"][0], d["w"], None, d["g"], d["be"], rm, rv, 1, 1, training=False)
    zr = F.relu(F.batch_norm(F.conv2d(d["x"][:1], d["w"], None, 1, 1), d["rm"], d["rv"], d["g"], d["be"], False))
    torch.testing.assert_close(z, zr[0], rtol=1e-4, atol=1e-5)


# ---- the kernel-table pieces the fused op is built from (every CPU backend) -------------------

from conftest import cpu_backends  # noqa: E402
from pyconv import _args, backends  # noqa: E402


def _conv_shape(x, w, stride, padding, groups):
    return _args.conv2d_shape(x, w, None, _args.conv2d_params(tuple(w.shape[2:]), stride, padding, 1, groups))


@pytest.mark.parametrize("backend,algo", conv_impls())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_conv_forward_stats(backend, algo, dtype):
    """conv2d_forward(stats=...) leaves y unchanged and writes its per-channel sum and sum of squares."""
    torch.manual_seed(1)
    stride = 2 if algo == "direct" else 1
    x, w, b = torch.randn(2, 4, 7, 9, dtype=dtype), torch.randn(6, 2, 3, 3, dtype=dtype), torch.randn(6, dtype=dtype)
    x[0, 0, 0, 0] = 50.0  # a large mean in one channel
    s = _conv_shape(x, w, stride, 1, 2)
    mod = backends.load(backend)
    y_plain = torch.full((s.N, s.K, s.P, s.Q), float("nan"), dtype=dtype)
    mod.conv2d_forward(x, w, b, y_plain, s, algo)
    y = torch.full_like(y_plain, float("nan"))
    stats = torch.full((2, s.K), float("nan"), dtype=torch.float64)
    mod.conv2d_forward(x, w, b, y, s, algo, stats=stats)
    assert torch.equal(y, y_plain)
    yd = y.double()
    torch.testing.assert_close(stats[0], yd.sum((0, 2, 3)), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(stats[1], (yd * yd).sum((0, 2, 3)), rtol=1e-12, atol=1e-9)



@pytest.mark.skipif("cpp" not in pyconv.available_backends(), reason="needs the cpp backend")
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", ["3x3_groups", "1x1", "3x3_stride2"])
def test_im2col_epilogue_stats_on_large_gemms(case, threads):
    """The im2col GEMM takes the statistics tile by tile in its epilogue: shapes with several K blocks
    (CRS 360 > KC), several N chunks, partial MR x NR tiles, groups, the pointwise and strided paths."""
    torch.manual_seed(2)
    C, K, k, stride, groups = {"3x3_groups": (80, 14, 3, 1, 2), "1x1": (300, 13, 1, 1, 1),
                               "3x3_stride2": (40, 10, 3, 2, 1)}[case]
    x = torch.randn(3, C, 23, 37) + 0.5
    w, b = torch.randn(K, C // groups, k, k) / math.sqrt(C * k * k / groups), torch.randn(K)
    s = _conv_shape(x, w, stride, k // 2, groups)
    mod = backends.load("cpp")
    y = torch.empty(s.N, s.K, s.P, s.Q)
    stats = torch.full((2, s.K), float("nan"), dtype=torch.float64)
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(threads)
        mod.conv2d_forward(x, w, b, y, s, "im2col", stats=stats)
    finally:
        pyconv.set_num_threads(before)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride, k // 2, 1, groups), rtol=1e-4, atol=1e-4)
    yd = y.double()
    torch.testing.assert_close(stats[0], yd.sum((0, 2, 3)), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(stats[1], (yd * yd).sum((0, 2, 3)), rtol=1e-12, atol=1e-9)

@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_keywords(backend, dtype, training):
    """batch_norm_forward(relu=True, stats=...) = relu(batch_norm(y)); batch_norm_backward(relu_output=z)
    = the gradient through the ReLU then the batch norm (torch's relu backward: NaN outputs pass)."""
    torch.manual_seed(2)
    N, C, L = 3, 5, 37
    y = torch.randn(N, C, L, dtype=dtype) * 3 + 2
    w, b = torch.rand(C, dtype=dtype) + 0.5, torch.randn(C, dtype=dtype)
    rm, rv = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    mod = backends.load(backend)
    shape = _args.BatchNormShape(N, C, L)
    stats = torch.stack([y.double().sum((0, 2)), (y.double() ** 2).sum((0, 2))]) if training else None
    z = torch.full_like(y, float("nan"))
    sm, si = torch.empty(C, dtype=dtype), torch.empty(C, dtype=dtype)
    rm_got, rv_got = rm.clone(), rv.clone()
    mod.batch_norm_forward(y, w, b, rm_got, rv_got, z, sm, si, shape, training, 0.1, 1e-5, relu=True, stats=stats)
    leaves = [t.clone().requires_grad_() for t in (y, w, b)]
    rm_ref, rv_ref = rm.clone(), rv.clone()
    zr = F.relu(F.batch_norm(leaves[0], rm_ref, rv_ref, leaves[1], leaves[2], training, 0.1, 1e-5))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert _rel(z, zr) < tol
    torch.testing.assert_close(rm_got, rm_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(rv_got, rv_ref, rtol=tol, atol=tol)
    assert (z >= 0).all()
    gz = torch.randn_like(y)
    want = torch.autograd.grad(zr, leaves, gz)
    gx, gw, gb = torch.empty_like(y), torch.empty(C, dtype=dtype), torch.empty(C, dtype=dtype)
    mod.batch_norm_backward(gz, y, w, sm, si, gx, gw, gb, shape, training, relu_output=z)
    for name, a, e in zip(("input", "weight", "bias"), (gx, gw, gb), want):
        assert _rel(a, e) < tol * 10, name
