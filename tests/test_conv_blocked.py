"""The channel-blocked direct forward (csrc/cpu/conv_blocked.cpp), which the cpp backend's `direct`
algorithm runs for groups of at least one SIMD vector of output channels (8 float, 4 double): its
edges against torch. Channel counts that are not a multiple of the block (zero lanes), narrow input
groups (fewer channels than a vector: one block of all of them, interleaved per pixel, each lane
count its own kernel), output channels that fill part of a 2-vector panel, short rows (a 6-pixel
register tile wraps to the next row and the next image), pixel blocks (equal, up to 960) spanning images,
strides, dilations, asymmetric padding, groups; the statistics of a fused training forward and the
inference epilogue. Outputs start as NaN (conftest), so a pixel or channel the kernel skips fails."""
import pytest
import torch
import torch.nn.functional as F

import pyconv.functional as PF
from checks import assert_close

DTYPES = [torch.float32, torch.float64]

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = [
    (1, 8, 7, 7, 8, 3, 3, 1, 1, 1, 1),           # one block, one panel half-used
    (2, 9, 5, 6, 17, 3, 3, 1, 1, 1, 1),          # a lane past Cg in the second block; 17 = panel + 1
    (3, 20, 13, 10, 40, 3, 3, 2, 1, 1, 1),       # stride 2, odd sizes
    (2, 32, 10, 10, 32, 5, 5, 1, 2, 1, 1),       # 5x5
    (2, 16, 12, 12, 16, 3, 3, 1, 2, 2, 1),       # dilation 2
    (2, 32, 9, 9, 64, 1, 1, 2, 0, 1, 1),         # 1x1 stride 2
    (2, 32, 9, 9, 48, 3, 3, 1, 1, 1, 2),         # groups of 16 -> 24
    (2, 24, 6, 5, 8, 3, 2, 1, (1, 0), 1, 1),     # 3x2 kernel, asymmetric padding
    (1, 16, 1, 3, 16, 1, 3, 1, (0, 1), 1, 1),    # a 3-pixel image: every tile wraps
    (5, 8, 3, 2, 8, 3, 3, 1, 1, 1, 1),           # 6-pixel images: tiles line up with images
    (3, 8, 20, 23, 8, 3, 3, 1, 1, 1, 1),         # 460 pixels an image: 960-pixel blocks span images
    (1, 16, 40, 33, 24, 3, 3, 1, 1, 1, 1),       # one image over two blocks
    (2, 12, 9, 9, 12, 7, 7, 2, 3, 1, 1),         # a stem-like 7x7 stride 2
    # narrow input groups (float: under 8 channels, double: under 4)
    (2, 3, 17, 19, 32, 3, 3, 2, 1, 1, 1),        # an RGB stem, stride 2
    (2, 3, 11, 10, 20, 7, 7, 2, 3, 1, 1),        # a 7x7 RGB stem, 20 = a panel and a part
    (1, 1, 9, 8, 8, 3, 3, 1, 1, 1, 1),           # one input channel
    (2, 8, 9, 9, 16, 3, 3, 1, 1, 2, 2),          # groups of 4 -> 8 (float narrow, double a block)
    (1, 6, 5, 7, 8, 3, 3, 1, (2, 1), (1, 2), 1), # 6 channels, dilation, asymmetric padding
    (3, 2, 4, 4, 9, 3, 3, 1, 3, 1, 1),           # padding past the kernel's reach: whole padded rows
    (1, 5, 3, 2, 8, 1, 1, 1, 0, 1, 1),           # 1x1, 5 channels, a 6-pixel image
    (2, 16, 62, 61, 40, 3, 3, 2, 1, 1, 1),       # stride 2, 3 pixel blocks x 3 panels (5 in double): every task
]


def _id(case):
    return "x".join(str(v) for v in case[:7]) + f"-s{case[7]}-p{case[8]}-d{case[9]}-g{case[10]}"


def _data(case, dtype, bias=True):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // groups, R, S, dtype=dtype)
    b = torch.randn(K, dtype=dtype) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_against_torch(case, dtype):
    x, w, b, kw = _data(case, dtype)
    got = PF.conv2d(x, w, b, algo="direct", backend="cpp", **kw)
    assert_close(got, F.conv2d(x, w, b, **kw), dtype, "output")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[10], CASES[13]], ids=_id)
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_epilogue_with_residual(case, dtype, activation):
    x, w, b, kw = _data(case, dtype)
    ref = F.conv2d(x, w, b, **kw)
    residual = torch.randn_like(ref)
    want = ref + residual
    want = {"none": want, "relu": F.relu(want), "relu6": F.relu6(want)}[activation]
    got = PF.conv2d_activation(x, w, b, residual, activation=activation, algo="direct", backend="cpp", **kw)
    assert_close(got, want, dtype, "output")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[10], CASES[11], CASES[13], CASES[16], CASES[-1]], ids=_id)
def test_training_statistics(case, dtype):
    """The fused conv-BN-ReLU forward takes its batch statistics from the kernel's epilogue
    (per-block partials summed in a fixed order): normalized output and running statistics."""
    x, w, b, kw = _data(case, dtype)
    K = w.shape[0]
    gamma, beta = torch.rand(K, dtype=dtype) + 0.5, torch.randn(K, dtype=dtype)
    rm, rv = torch.zeros(K, dtype=dtype), torch.ones(K, dtype=dtype)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    got = PF.conv_bn_relu(x, w, b, gamma, beta, rm, rv, training=True, algo="direct", backend="cpp", **kw)
    want = F.relu(F.batch_norm(F.conv2d(x, w, b, **kw), rm_ref, rv_ref, gamma, beta, training=True))
    assert_close(got, want, dtype, "output", kind="batch_norm")
    assert_close(rm, rm_ref, dtype, "running_mean", kind="batch_norm")
    assert_close(rv, rv_ref, dtype, "running_var", kind="batch_norm")


def test_statistics_do_not_depend_on_threads():
    from pyconv import _C
    x, w, b, kw = _data(CASES[11], torch.float32)
    K = w.shape[0]
    outs = []
    prev = _C.get_num_threads()
    try:
        for n in (1, 2, 3):
            _C.set_num_threads(n)
            rm, rv = torch.zeros(K), torch.ones(K)
            PF.conv_bn_relu(x, w, b, torch.ones(K), torch.zeros(K), rm, rv, training=True, algo="direct",
                            backend="cpp", **kw)
            outs.append(torch.cat([rm, rv]))
    finally:
        _C.set_num_threads(prev)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("channels", range(1, 18))
def test_every_lane_count(channels, dtype):
    """Each count of input channels a block holds (1 to 16 float lanes on AVX-512, 8 on AVX2; 8 and
    4 double) runs its own unrolled kernel; 17 is a full block and a 1-lane one."""
    x, w, b, kw = _data((2, channels, 7, 9, 20, 3, 3, 2, 1, 1, 1), dtype)
    got = PF.conv2d(x, w, b, algo="direct", backend="cpp", **kw)
    assert_close(got, F.conv2d(x, w, b, **kw), dtype, "output")


@pytest.mark.parametrize("case", [(8, 32, 28, 28, 64, 3, 3, 2, 1, 1, 1), (3, 16, 20, 23, 16, 3, 3, 1, 1, 1, 1)],
                         ids=_id)
def test_output_does_not_depend_on_threads(case):
    """Pixel blocks are sized by the thread count (equal blocks, a multiple of the threads where the
    panels do not divide among them): every split gives the same output, bit for bit."""
    from pyconv import _C
    x, w, b, kw = _data(case, torch.float32)
    prev = _C.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3, 5):
            _C.set_num_threads(n)
            outs.append(PF.conv2d(x, w, b, algo="direct", backend="cpp", **kw))
    finally:
        _C.set_num_threads(prev)
    assert_close(outs[0], F.conv2d(x, w, b, **kw), torch.float32, "output")
    assert all(torch.equal(outs[0], o) for o in outs[1:])


GRAD_CASES = [c for c in CASES if c[7] == 1] + [
    (2, 16, 6, 7, 24, 1, 1, 1, 1, 1, 1),         # 1x1 with padding: grad-input crops (padding -1)
    (1, 24, 9, 8, 16, 3, 3, 1, (2, 0), 1, 2),    # more padding than the kernel reaches, groups
    # strided: one stride-1 convolution per output phase (dilation 1, kernel >= stride)
    CASES[2],                                    # stride 2, odd sizes: phases of unequal size
    CASES[-1],                                   # stride 2, several pixel blocks and panels a phase
    (2, 16, 12, 11, 32, 4, 4, 2, 1, 1, 1),       # even kernel: 2x2 taps in every phase
    (1, 24, 11, 13, 16, 5, 5, 3, 2, 1, 1),       # stride 3: 9 phases of 1-2 x 1-2 taps
    (2, 16, 10, 9, 24, 3, 3, (2, 1), (1, 0), 1, 1),  # stride 2 x 1, asymmetric padding
    (1, 32, 7, 7, 16, 3, 3, 2, 0, 1, 1),         # no padding: gx's last row and column get no tap
    (2, 16, 1, 1, 16, 3, 3, 2, 1, 1, 1),         # a 1x1 image: phases without pixels
    (1, 16, 9, 9, 16, 3, 3, 2, 4, 1, 1),         # padding past the kernel's reach: phases crop gy
    (2, 36, 9, 9, 68, 3, 3, 2, 1, 1, 2),         # groups of 18 -> 34 (lanes past the channel counts)
    (2, 16, 12, 12, 16, 3, 3, 2, 1, 2, 1),       # dilation 2: the row kernels
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=_id)
def test_gradients_against_torch(case, dtype):
    """Grad-input of a stride-1 layer runs the blocked forward on gy (rotated, channel-transposed
    filters, padding dil*(R-1) - pad, cropping where that is negative), of a strided one a stride-1
    blocked convolution per output phase written sh x sw apart (dilated ones and grad-weight the
    row kernels)."""
    x, w, b, kw = _data(case, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = PF.conv2d(*leaves, algo="direct", backend="cpp", **kw)
    ref = F.conv2d(*ref_leaves, **kw)
    gy = torch.randn_like(ref)
    for g, e, what in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, ref_leaves, gy),
                          ("grad_input", "grad_weight", "grad_bias")):
        assert_close(g, e, dtype, what)


def test_generic_isa_matches_torch():
    """The portable tile kernel (CPUs without AVX2; vector extensions instead of assembly)."""
    import os
    import subprocess
    import sys
    code = (
        "import torch, pyconv, pyconv.functional as PF, torch.nn.functional as F\n"
        "assert pyconv._C.isa() == 'generic'\n"
        "for dt in (torch.float32, torch.float64):\n"
        "  x, w, b = torch.randn(3, 20, 13, 10, dtype=dt), torch.randn(40, 10, 3, 3, dtype=dt), torch.randn(40, dtype=dt)\n"
        "  y = PF.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2, algo='direct', backend='cpp')\n"
        "  r = F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)\n"
        "  assert (y - r).norm() <= 1e-5 * r.norm(), (y - r).norm()\n"
        "  x, w = torch.randn(2, 3, 11, 10, dtype=dt), torch.randn(20, 3, 3, 3, dtype=dt)\n"
        "  y = PF.conv2d(x, w, None, stride=2, padding=1, algo='direct', backend='cpp')\n"
        "  r = F.conv2d(x, w, None, stride=2, padding=1)\n"
        "  assert (y - r).norm() <= 1e-5 * r.norm(), (y - r).norm()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYCONV_FORCE_GENERIC="1"))


@pytest.mark.parametrize("plan", ["direct/im2col", "im2col/direct", "direct/direct/im2col", "im2col/winograd/direct"])
def test_pass_plans_train_against_torch(plan, monkeypatch):
    """A '<forward>/<backward>' plan (what 'auto' runs with gradients where only the blocked forward
    wins): conv2d and the fused conv-BN-ReLU, forward and every gradient, float64; each pass runs
    its own algorithm."""
    from pyconv import backends
    be, ran = backends.load("cpp"), []
    for name, at in (("conv2d_forward", 5), ("conv2d_backward_input", 4), ("conv2d_backward_weight", 5)):
        def spy(*args, _fn=getattr(be, name), _name=name, _at=at, **kwargs):
            ran.append((_name, args[_at]))  # the algorithm argument
            return _fn(*args, **kwargs)
        monkeypatch.setattr(be, name, spy)
    x, w, b, kw = _data(CASES[1], torch.float64)  # stride 1 (Winograd can take it)
    K = w.shape[0]
    gamma, beta = torch.rand(K, dtype=torch.float64) + 0.5, torch.randn(K, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, gamma, beta)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b, gamma, beta)]
    rm, rv = torch.zeros(K, dtype=torch.float64), torch.ones(K, dtype=torch.float64)
    y = PF.conv_bn_relu(*leaves, rm.clone(), rv.clone(), training=True, algo=plan, backend="cpp", **kw)
    y = y + PF.conv2d(*leaves[:3], algo=plan, backend="cpp", **kw)
    conv = F.conv2d(*ref_leaves[:3], **kw)
    ref = F.relu(F.batch_norm(conv, rm.clone(), rv.clone(), ref_leaves[3], ref_leaves[4], training=True)) + conv
    assert_close(y, ref, torch.float64, "output")
    gy = torch.randn_like(ref)
    for g, e, what in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, ref_leaves, gy),
                          ("grad_input", "grad_weight", "grad_bias", "grad_bn_weight", "grad_bn_bias")):
        assert_close(g, e, torch.float64, what, kind="batch_norm")
    from pyconv.problem import pass_algos
    fwd, gi, gw = pass_algos(plan)
    assert [a for n, a in ran if n == "conv2d_forward"] == [fwd] * 2
    assert [a for n, a in ran if n == "conv2d_backward_input"] == [gi] * 2
    assert [a for n, a in ran if n == "conv2d_backward_weight"] == [gw] * 2


def test_gradcheck_float64():
    """Numerical Jacobians of the blocked forward and grad-input, stride 1 and 2 (8 channels each side)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: PF.conv2d(x, w, b, padding=1, algo="direct", backend="cpp"),
                                    (x, w, b))
    x = torch.randn(1, 8, 7, 6, dtype=torch.float64, requires_grad=True)  # strided: by phases
    assert torch.autograd.gradcheck(lambda x, w, b: PF.conv2d(x, w, b, stride=2, padding=1, algo="direct",
                                                              backend="cpp"), (x, w, b))
