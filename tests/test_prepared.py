"""Inference with prepared weights: pyconv.convert fuses Conv2d -> BatchNorm2d -> {ReLU, ReLU6,
nothing} and the residual tails into FusedConv, whose folded weights are built once and must never
serve a stale result. Every way a user changes a model is followed by two eval calls against torch,
for each algorithm; state dicts move both ways; threads; deepcopy; memory reported and freed."""
import copy
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyconv
import pyconv.nn as PN
from checks import assert_close
from models import EveryPattern as Block


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.5, 0.5)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)


def _pair(algo="auto", dtype=torch.float32):
    torch.manual_seed(0)
    ref = Block().to(dtype)
    _randomize_bn(ref)
    ref.eval()
    model = pyconv.convert(copy.deepcopy(ref), algo=algo).eval()
    for m in model.modules():  # the 1x1 layers keep 'auto' where the algorithm is Winograd
        if isinstance(m, PN.Conv2d) and m.kernel_size != (3, 3):
            m.algo = "auto"
    return ref, model


X = torch.randn(2, 16, 12, 12)


def _check(model, ref, x=X, what=""):
    for i in range(3):  # the first call may rebuild, the second binds its kernel, the third runs it bound
        with torch.no_grad():
            assert_close(model(x), ref(x), x.dtype, f"{what} call {i}", kind="conv")


def test_every_pattern_is_fused_and_keys_are_the_originals():
    ref, model = _pair()
    fused = [m for m in model.modules() if isinstance(m, PN.FusedConv)]
    assert sorted((m.activation, m.residual) for m in fused) == [
        ("none", False), ("none", True), ("relu", False), ("relu", True), ("relu6", False)]
    assert any(isinstance(m, PN.AdaptiveAvgPool2d) for m in model.modules())
    assert list(model.state_dict()) == list(ref.state_dict())
    _check(model, ref)
    assert all(m.prepared_bytes() > 0 for m in fused)


@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd"])
def test_fused_inference_matches_torch(algo):
    ref, model = _pair(algo)
    _check(model, ref, what=algo)
    ref64, model64 = _pair(algo, torch.float64)
    with torch.no_grad():
        x = X.double()
        assert_close(model64(x), ref64(x), torch.float64, algo, kind="conv")


def _optimizer_step(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()


def _new_parameter(m):
    m.conv2.weight = nn.Parameter(m.conv2.weight.detach() * 0.5)
    m.bn4.bias = nn.Parameter(m.bn4.bias.detach() + 1)


def _in_place(m):
    with torch.no_grad():
        m.conv1.weight.mul_(1.5)
        m.bn2.running_var.add_(1.0)
        m.get_submodule("down.1").running_mean.sub_(0.25)  # fx keeps the path, not the Sequential


def _buffer_replaced(m):
    m.bn3.running_mean = m.bn3.running_mean + 0.5


def _eps_changed(m):
    m.bn1.eps = 0.5


CHANGES = {"optimizer_step": _optimizer_step, "new_parameter": _new_parameter, "in_place": _in_place,
           "buffer_replaced": _buffer_replaced, "eps": _eps_changed}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd"])
def test_changes_are_never_served_stale(change, algo):
    ref, model = _pair(algo)
    _check(model, ref, what="before")
    CHANGES[change](ref)
    CHANGES[change](model)
    _check(model, ref, what=change)


def test_load_state_dict_both_ways():
    ref, model = _pair()
    _check(model, ref)
    other = Block()
    _randomize_bn(other)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
    other.eval()
    model.load_state_dict(other.state_dict())  # a torch checkpoint into the converted model
    _check(model, other, what="torch -> pyconv")
    back = Block().eval()
    back.load_state_dict(model.state_dict())  # and the converted model's checkpoint into torch
    _check(model, back, what="pyconv -> torch")


def test_train_eval_round_trip_and_memory_freed():
    ref, model = _pair()
    _check(model, ref)
    fused = [m for m in model.modules() if isinstance(m, PN.FusedConv)]
    model.train(), ref.train()
    assert all(m.prepared_bytes() == 0 for m in fused)  # train() frees the prepared weights
    x = torch.randn(4, 16, 12, 12)
    model(x), ref(x)  # a training step moves the running statistics
    model.eval(), ref.eval()
    _check(model, ref, what="after a training forward")


def test_to_dtype_and_deepcopy():
    ref, model = _pair()
    _check(model, ref)
    model64, ref64 = copy.deepcopy(model).double(), copy.deepcopy(ref).double()
    _check(model64, ref64, x=X.double(), what="double")
    _check(model, ref, what="the original after its copy moved")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.conv1.weight.zero_()
    _check(model, ref, what="original after the copy changed")
    for a, b in zip(twin.modules(), model.modules()):
        if isinstance(a, PN.FusedConv):
            assert a.conv is not b.conv and a._prepared is not b._prepared


def test_concurrent_calls_and_a_change_between_them():
    ref, model = _pair()
    errors = []

    def run():
        try:
            for _ in range(5):
                _check(model, ref)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)
    def run_in_threads():
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
    run_in_threads()
    _in_place(model), _in_place(ref)
    run_in_threads()


def test_gradients_in_eval_mode_take_the_unfused_path():
    ref, model = _pair()
    x = X.clone().requires_grad_()
    xr = X.clone().requires_grad_()
    model(x).sum().backward()
    ref(xr).sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, "grad input in eval", kind="conv")
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, torch.float32, n, kind="conv")


def test_training_matches_torch():
    torch.manual_seed(0)
    ref = Block()
    model = pyconv.convert(copy.deepcopy(ref))
    x = torch.randn(4, 16, 12, 12)
    for _ in range(2):
        for m in (ref, model):
            m.zero_grad()
            m(x).square().mean().backward()
        for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            # absolute too: a conv bias before a training BN has a gradient of ~0 (BN removes the mean)
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)
        for (n, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            assert_close(b.double(), c.double(), torch.float32, n, kind="conv")


def test_conv2d_activation_functional_matches_torch():
    x, w, b = torch.randn(2, 6, 9, 9), torch.randn(8, 6, 3, 3), torch.randn(8)
    r = torch.randn(2, 8, 9, 9)
    for act, f in (("none", lambda v: v), ("relu", F.relu), ("relu6", F.relu6)):
        for res in (None, r):
            want = f(F.conv2d(x, w, b, padding=1) + (0 if res is None else res))
            got = pyconv.functional.conv2d_activation(x, w, b, res, padding=1, activation=act)
            assert_close(got, want, torch.float32, act, kind="conv")
    with pytest.raises(pyconv.PyConvError, match="residual"):
        pyconv.functional.conv2d_activation(x, w, b, r[:, :4], padding=1)
    with pytest.raises(pyconv.PyConvError, match="activation"):
        pyconv.functional.conv2d_activation(x, w, b, None, padding=1, activation="gelu")


def test_models_that_do_not_trace_convert_unfused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return F.relu(self.bn(self.conv(x)))
            return self.conv(x)
    ref = Branchy().eval()
    model = pyconv.convert(copy.deepcopy(ref)).eval()
    assert not any(isinstance(m, PN.FusedConv) for m in model.modules())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert_close(model(x), ref(x), torch.float32, "unfused", kind="conv")


@pytest.mark.parametrize("algo", ["winograd_2x2", "winograd_4x4", "im2col", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_functional_prepared_cache_follows_the_weight(algo, dtype):
    from pyconv.prepared import PreparedCache
    cache = PreparedCache()
    x, w, b = torch.randn(1, 16, 18, 18, dtype=dtype), torch.randn(24, 16, 3, 3, dtype=dtype), torch.randn(24, dtype=dtype)
    for step in range(3):
        got = pyconv.functional.conv2d_activation(x, w, b, None, padding=1, activation="relu", algo=algo,
                                                  prepared_cache=cache)
        assert_close(got, F.relu(F.conv2d(x, w, b, padding=1)), dtype, f"{algo} step {step}", algo=algo)
        assert cache.nbytes > 0  # Winograd: its transformed filters, im2col: GEMM panels, direct: blocked panels
        with torch.no_grad():
            w.mul_(-0.5)  # in place: the transformed filters must be rebuilt
    # a different spatial size switches the 'winograd' alias's tile: the cache follows
    for hw in (8, 20):
        x2 = torch.randn(1, 16, hw, hw, dtype=dtype)
        got = pyconv.functional.conv2d_activation(x2, w, b, None, padding=1, activation="none", algo="winograd",
                                                  prepared_cache=cache)
        assert_close(got, F.conv2d(x2, w, b, padding=1), dtype, f"winograd {hw}x{hw}", algo="winograd_4x4")


def test_prepared_filters_are_checked_at_the_binding():
    from pyconv import _C, _args
    x, w = torch.randn(1, 8, 6, 6), torch.randn(8, 8, 3, 3)
    s = _args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 1, 1, 1))
    y = torch.empty(1, 8, 6, 6)
    with pytest.raises(pyconv.PyConvError, match="prepared"):
        _C.conv_winograd_forward(_C.ConvShape(*s), 2, x.numpy(), w.numpy(), None, y.numpy(), None,
                                 torch.empty(7).numpy())


def test_inference_mode_and_back():
    ref, model = _pair("winograd")
    for ctx in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with ctx():
            assert_close(model(X), ref(X), torch.float32, ctx.__name__, kind="conv")
    _in_place(model), _in_place(ref)
    with torch.inference_mode():
        assert_close(model(X), ref(X), torch.float32, "after a change", kind="conv")


def test_prepared_im2col_weights_are_checked_at_the_binding():
    from pyconv import _C, _args
    x, w = torch.randn(1, 8, 6, 6), torch.randn(8, 8, 3, 3)
    s = _C.ConvShape(*_args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 1, 1, 1)))
    y = torch.empty(1, 8, 6, 6)
    with pytest.raises(pyconv.PyConvError, match="prepared"):
        _C.conv_im2col_forward(s, x.numpy(), w.numpy(), None, y.numpy(), None, torch.empty(7).numpy())
    n = _C.conv_im2col_prepared_numel(s, "float32")
    with pytest.raises(pyconv.PyConvError, match="another shape or layout"):  # right size, never packed
        _C.conv_im2col_forward(s, x.numpy(), w.numpy(), None, y.numpy(), None, torch.zeros(n).numpy())


def test_prepared_direct_weights_are_checked_at_the_binding():
    from pyconv import _C, _args

    def shape(x, w, groups=1):
        return _C.ConvShape(*_args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 1, 1, groups)))
    W = _C.conv_direct_blocked_min_channels("float32")  # the SIMD width: 8 (AVX2) or 16 (AVX-512)
    x, w, y = torch.randn(1, 8, 6, 6), torch.randn(2 * W, 8, 3, 3), torch.empty(1, 2 * W, 6, 6)
    s = shape(x, w)
    n = _C.conv_direct_prepared_numel(s, "float32")
    assert n > 0
    with pytest.raises(pyconv.PyConvError, match="prepared"):  # wrong size
        _C.conv_direct_forward(s, x.numpy(), w.numpy(), None, y.numpy(), None, torch.empty(n - 1).numpy())
    with pytest.raises(pyconv.PyConvError, match="another shape"):  # right size, never blocked
        _C.conv_direct_forward(s, x.numpy(), w.numpy(), None, y.numpy(), None, torch.zeros(n).numpy())
    # blocked for 8 -> W + 2 channels (one panel of 2W, as 8 -> 2W), then called with 8 -> 2W: another header
    w2 = torch.randn(W + 2, 8, 3, 3)
    s2 = shape(x, w2)
    other = torch.empty(_C.conv_direct_prepared_numel(s2, "float32"))
    assert other.numel() == n
    _C.conv_direct_prepare_weight(s2, w2.numpy(), other.numpy())
    with pytest.raises(pyconv.PyConvError, match="another shape"):
        _C.conv_direct_forward(s, x.numpy(), w.numpy(), None, y.numpy(), None, other.numpy())
    # narrow groups (4 channels each) run the row kernel, which takes nothing prepared
    xn, wn = torch.randn(1, 8, 6, 6), torch.randn(8, 4, 3, 3)
    sn = shape(xn, wn, groups=2)
    assert _C.conv_direct_prepared_numel(sn, "float32") == 0
    with pytest.raises(pyconv.PyConvError, match="takes none"):
        _C.conv_direct_forward(sn, xn.numpy(), wn.numpy(), None, torch.empty(1, 8, 6, 6).numpy(), None,
                               torch.zeros(16).numpy())
    with pytest.raises(pyconv.PyConvError, match="takes none"):
        _C.conv_direct_prepare_weight(sn, wn.numpy(), torch.zeros(16).numpy())
    assert pyconv.backends.load("cpp").prepare_conv_weight(wn, tuple(_args.conv2d_shape(
        xn, wn, None, _args.conv2d_params((3, 3), 1, 1, 1, 2))), "direct") is None


def test_prepared_im2col_layouts_are_checked_at_the_binding():
    """Weights packed in one layout (or for one shape) never run another's call: the header says."""
    from pyconv import _C, _args
    w = torch.randn(512, 512, 3, 3)

    def shape_of(x):
        return _C.ConvShape(*_args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 1, 1, 1)))
    # 49 pixels fill few tiles of NR (pixel rows); 4x8x8 fill 256 rows, a multiple of MR and NR (usual)
    small, large = torch.randn(1, 512, 7, 7), torch.randn(4, 512, 8, 8)
    s_small, s_large = shape_of(small), shape_of(large)
    assert (_C.conv_im2col_prepared_layout(s_small, "float32"), _C.conv_im2col_prepared_layout(s_large, "float32")) \
        == (1, 0)
    packed = torch.empty(_C.conv_im2col_prepared_numel(s_small, "float32"))
    _C.conv_im2col_prepare_weight(s_small, w.numpy(), packed.numpy())
    y = torch.empty(4, 512, 8, 8)
    if packed.numel() == _C.conv_im2col_prepared_numel(s_large, "float32"):
        with pytest.raises(pyconv.PyConvError, match="another shape or layout"):
            _C.conv_im2col_forward(s_large, large.numpy(), w.numpy(), None, y.numpy(), None, packed.numpy())
    stats = torch.empty(2, 512, dtype=torch.float64)
    with pytest.raises(pyconv.PyConvError, match="stats"):
        _C.conv_im2col_forward(s_small, small.numpy(), w.numpy(), None, torch.empty(1, 512, 7, 7).numpy(), stats.numpy(),
                               packed.numpy())


@pytest.mark.parametrize("shape", [(1, 512, 7, 7, 512, 3, 3, 1, 1), (1, 2048, 3, 3, 160, 1, 1, 1, 1),
                                   (2, 256, 3, 3, 1024, 3, 3, 1, 1), (1, 512, 6, 5, 240, 3, 3, 2, 2),
                                   (1, 1024, 3, 3, 264, 1, 1, 1, 1), (1, 64, 3, 3, 64, 9, 9, 1, 1)],
                         ids=["7x7", "1x1", "batch-2", "stride-2-groups", "odd-channels", "81-taps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_prepared_im2col_pixel_rows_match_torch(shape, dtype):
    """The transposed forward (pixels as the GEMM's rows) of few-pixel layers with prepared weights:
    every activation, with and without a residual, images spanning a tile, groups, strides, channel
    counts off the panel width; outputs NaN-filled first (PYCONV_DEBUG_FILL in the tests)."""
    from pyconv import _C, _args
    torch.manual_seed(0)
    N, C, H, W, K, R, S, stride, groups = shape
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // groups, R, S, dtype=dtype) / (C * R * S) ** 0.5
    b = torch.randn(K, dtype=dtype)
    s = _C.ConvShape(*_args.conv2d_shape(x, w, b, _args.conv2d_params((R, S), stride, R // 2, 1, groups)))
    # (float64's AVX2 panels are 8 wide: 49 pixels fill 56 columns, so 7x7 keeps the usual layout there;
    # AVX-512's are 16 wide, and it takes pixel rows)
    if not (H == 7 and dtype == torch.float64):
        assert _C.conv_im2col_prepared_layout(s, str(dtype)[6:]) == 1
    p = pyconv.prepare(w, b, stride, R // 2, 1, groups, algo="im2col")
    ref = F.conv2d(x, w, b, stride, R // 2, 1, groups)
    r = torch.randn_like(ref)
    with torch.no_grad():
        for act, f in (("none", lambda v: v), ("relu", F.relu), ("relu6", F.relu6)):
            for res in (None, r):
                for _ in range(2):
                    assert_close(p(x, res, act), f(ref if res is None else ref + res), dtype, f"{act} {res is None}",
                                 kind="conv")


@pytest.mark.parametrize("shape", [(1, 64, 7, 7, 96, 3, 3, 1, 1), (2, 24, 9, 9, 40, 1, 1, 1, 2),
                                   (1, 300, 5, 5, 20, 3, 3, 2, 1)],
                         ids=["3x3", "1x1-groups", "wide-K-blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_prepared_im2col_matches_torch(shape, dtype):
    """Packed GEMM panels across several K blocks, groups and batch-1 column counts."""
    from pyconv.prepared import PreparedCache
    N, C, H, W, K, R, S, stride, groups = shape
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.randn(K, C // groups, R, S, dtype=dtype)
    cache = PreparedCache()
    for _ in range(2):
        got = pyconv.functional.conv2d_activation(x, w, None, None, stride, R // 2, 1, groups, "none",
                                                  algo="im2col", prepared_cache=cache)
        assert_close(got, F.conv2d(x, w, None, stride, R // 2, 1, groups), dtype, "prepared im2col")
    assert cache.nbytes >= w.numel() * w.element_size()


def test_planned_calls_follow_every_argument():
    """A cached plan (the checks of the first call) serves only calls with the same sizes, weights
    and arguments; anything else takes the full path, with its checks and errors."""
    from pyconv.prepared import PreparedCache
    cache = PreparedCache()
    w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
    PF_act = pyconv.functional.conv2d_activation
    for x, pad, act in ((torch.randn(1, 4, 9, 9), 1, "relu"), (torch.randn(1, 4, 9, 9), 1, "relu"),
                        (torch.randn(2, 4, 9, 9), 1, "relu"), (torch.randn(2, 4, 9, 9), 0, "relu"),
                        (torch.randn(2, 4, 9, 9), 0, "relu6"), (torch.randn(2, 4, 9, 9).double(), 0, "relu6")):
        wx, bx = w.to(x.dtype), b.to(x.dtype)
        ref = F.relu(F.conv2d(x, wx, bx, padding=pad)) if act == "relu" else F.relu6(F.conv2d(x, wx, bx, padding=pad))
        assert_close(PF_act(x, wx, bx, None, padding=pad, activation=act, prepared_cache=cache), ref, x.dtype, act)
    x = torch.randn(1, 4, 9, 9)
    PF_act(x, w, b, None, padding=1, prepared_cache=cache)
    with pytest.raises(pyconv.PyConvError, match="residual"):  # a wrong residual still gets its error
        PF_act(x, w, b, torch.randn(1, 8, 3, 3), padding=1, prepared_cache=cache)
    xr = x.clone().requires_grad_()  # a gradient needed: the dispatcher path (no autograd formula)
    with torch.no_grad():
        assert_close(PF_act(xr, w, b, None, padding=1, prepared_cache=cache),
                     F.relu(F.conv2d(x, w, b, padding=1)), torch.float32, "no_grad")


def test_conv_activation_chains_without_batch_norm():
    """VGG's Conv2d -> ReLU (and -> ReLU6) fuse too: the kernel form of the conv's own weights."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, padding=1),
                        nn.ReLU6(), nn.Conv2d(16, 8, 1), nn.Flatten()).eval()
    model = pyconv.convert(copy.deepcopy(ref)).eval()
    fused = [m for m in model.modules() if isinstance(m, PN.FusedConv)]
    assert sorted(m.activation for m in fused) == ["relu", "relu6"] and all(m.bn is None for m in fused)
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 20, 20)
    _check(model, ref, x=x, what="conv-act")
    with torch.no_grad():
        ref.get_submodule("2").weight.mul_(-1)
        model.get_submodule("2").weight.mul_(-1)
    _check(model, ref, x=x, what="after an in-place edit")
    model.train(), ref.train()
    for m in (model, ref):
        m.zero_grad()
        m(x).square().mean().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize("algo", ["auto", "direct", "im2col", "winograd_2x2", "winograd_4x4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_prepare_matches_torch_and_follows_the_weight(algo, dtype):
    """pyconv.prepare binds a conv's weight, bias and arguments; the PreparedConv is called directly
    (with an activation and a residual) or passed to PF.conv2d as the weight, and an in-place edit
    of the weight or bias is never served stale."""
    torch.manual_seed(0)
    w, b = torch.randn(24, 16, 3, 3, dtype=dtype), torch.randn(24, dtype=dtype)
    p = pyconv.prepare(w, b, padding=1, algo=algo)
    x, r = torch.randn(2, 16, 12, 12, dtype=dtype), torch.randn(2, 24, 12, 12, dtype=dtype)
    with torch.no_grad():
        for step in range(3):
            ref = F.conv2d(x, w, b, padding=1)
            assert_close(p(x), ref, dtype, f"{algo} step {step}", kind="conv")
            assert_close(pyconv.functional.conv2d(x, p), ref, dtype, f"{algo} via conv2d", kind="conv")
            assert_close(p(x, r, "relu6"), F.relu6(ref + r), dtype, f"{algo} relu6 + residual", kind="conv")
            assert_close(p(x[0]), ref[0], dtype, f"{algo} unbatched", kind="conv")
            w.mul_(-0.5)
            b.add_(1.0)
    if algo in ("im2col", "winograd_2x2", "winograd_4x4"):
        assert p.nbytes > 0  # the kernel's form of the weight is kept
    p.clear()
    assert p.nbytes == 0
    assert "PreparedConv" in repr(p)


def test_prepare_with_gradients_and_misuse():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    p = pyconv.prepare(w, b, stride=2, padding=1)
    got = torch.autograd.grad(p(x, activation="relu").square().sum(), (x, w, b))
    ref = torch.autograd.grad(F.relu(F.conv2d(x, w, b, stride=2, padding=1)).square().sum(), (x, w, b))
    for g, r in zip(got, ref):
        assert_close(g, r, torch.float64, "prepare grad", kind="conv")
    with pytest.raises(pyconv.PyConvError, match="PreparedConv"):
        pyconv.functional.conv2d(x, p, stride=2)
    with pytest.raises(pyconv.PyConvError, match="PreparedConv"):
        pyconv.functional.conv2d(x, p, b)
    with pytest.raises(TypeError, match="weight"):
        pyconv.prepare([[1.0]])
    with torch.no_grad(), pytest.raises(pyconv.PyConvError, match="activation"):
        p(x.detach(), activation="gelu")


def test_bound_calls_are_taken_and_follow_their_sources():
    """A layer's later eval calls run bound to its kernel (cache.fast); a source kept outside the
    parameter dict (here a plain tensor attribute) takes the keyed path and is still followed."""
    ref, model = _pair("im2col")
    _check(model, ref, what="bound")
    fused = [m for m in model.modules() if isinstance(m, PN.FusedConv)]
    assert all(m._kernel_form.fast is not None for m in fused)
    for m in (ref, model):
        w = m.conv1.weight.detach().clone()
        del m.conv1.weight
        m.conv1.weight = w  # no longer a Parameter
    _check(model, ref, what="plain attribute")
    with torch.no_grad():
        ref.conv1.weight.mul_(-1.0)
        model.conv1.weight.mul_(-1.0)
    _check(model, ref, what="plain attribute edited")
    x = X[:1].clone()  # another input size: the full path, then bound again
    _check(model, ref, x=x, what="batch 1")
    with torch.no_grad():
        assert_close(model(X.to(memory_format=torch.channels_last)), ref(X), torch.float32, "channels_last",
                     kind="conv")
    model.train()
    assert all(m._kernel_form.fast is None for m in fused)  # train() frees it with the prepared weights


@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding="same", dilation=2, bias=False),
                                dict(stride=2, groups=4), dict(kernel_size=1, padding=0)])
def test_conv2d_layer_inference_keeps_its_weight_prepared(kw):
    """pyconv.nn.Conv2d in eval mode without gradients: prepared weight, bound calls, and every
    change followed (in-place edit, a new Parameter, another input size, unbatched, train())."""
    torch.manual_seed(0)
    kw = dict(kernel_size=3) | kw
    ref = nn.Conv2d(8, 16, **kw).eval()
    layer = PN.Conv2d(8, 16, **kw).eval()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 11, 11)

    def check(what, x=x):
        for i in range(3):
            with torch.no_grad():
                assert_close(layer(x), ref(x), x.dtype, f"{what} call {i}", kind="conv")
    check("first")
    assert layer._kernel_form.fast is not None
    with torch.no_grad():
        for m in (ref, layer):
            m.weight.mul_(-2.0)
    check("in place")
    for m in (ref, layer):
        m.weight = nn.Parameter(m.weight.detach() + 0.5)
    check("new parameter")
    check("batch 1", x[:1].clone())
    check("unbatched", x[0].clone())
    with torch.inference_mode():
        assert_close(layer(x), ref(x), x.dtype, "inference_mode", kind="conv")
    out = layer(x)  # gradients wanted: the autograd path
    out.sum().backward()
    assert layer.weight.grad is not None
    layer.train()
    assert layer.prepared_bytes() == 0


def test_blocked_direct_rule_matches_the_kernel():
    """'auto' reads which shapes direct runs channel-blocked from Backend.blocked_direct (Python, for
    torch.compile); the kernel's own answer is whether it has prepared panels for the shape."""
    from pyconv import _C, _args, backends
    be = backends.load("cpp")
    for dtype in (torch.float32, torch.float64):
        for C, K, G in ((3, 64, 1), (4, 8, 1), (8, 8, 1), (8, 4, 1), (16, 16, 2), (16, 16, 4), (32, 32, 32),
                        (64, 64, 8), (24, 40, 1)):
            x, w = torch.empty(1, C, 6, 6, dtype=dtype), torch.empty(K, C // G, 3, 3, dtype=dtype)
            shape = _args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), 1, 1, 1, G))
            kernel = _C.conv_direct_prepared_numel(_C.ConvShape(*shape), str(dtype)[6:]) > 0
            assert be.blocked_direct(shape, dtype) == kernel, (C, K, G, dtype)
