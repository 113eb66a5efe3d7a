"""A converted model's training calls run bound to their checked plan (functional.bound_conv_bn_relu:
one autograd node per fused layer, no re-planning): they must follow every change a user makes
between steps. Each change is followed by two training steps compared with torch's: outputs, every
gradient, running statistics and num_batches_tracked; the bound path must actually be taken."""
import copy

import pytest
import torch
import torch.nn as nn

import pyconv
import pyconv.nn as PN
from checks import assert_close
from models import EveryPattern

X = torch.randn(4, 16, 10, 10)


def _pair(dtype=torch.float32, algo="auto", backend="auto"):
    torch.manual_seed(0)
    ref = EveryPattern().to(dtype).train()
    model = pyconv.convert(copy.deepcopy(ref), algo=algo, backend=backend).train()
    for m in model.modules():  # the 1x1 layers keep 'auto' where the algorithm is Winograd
        if isinstance(m, PN.Conv2d) and m.kernel_size != (3, 3):
            m.algo = "auto"
    return ref, model


def _fused(model):
    return [m for m in model.modules() if isinstance(m, PN.FusedConv) and m.bn is not None]


def _step_and_compare(model, ref, x, what, steps=2):
    dtype = x.dtype
    for i in range(steps):
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = []
        for m, xi in zip((model, ref), xs):
            m.zero_grad(set_to_none=True)
            out = m(xi)
            out.square().mean().backward()
            outs.append(out)
        assert_close(outs[0], outs[1], dtype, f"{what} step {i} output", kind="conv")
        assert_close(xs[0].grad, xs[1].grad, dtype, f"{what} step {i} grad input", kind="conv")
        for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert (p.grad is None) == (q.grad is None), n
            if p.grad is not None:
                # absolute too: a conv bias before a training BN has a gradient of ~0
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3 if dtype == torch.float32 else 1e-9,
                                           atol=1e-5 if dtype == torch.float32 else 1e-12, msg=f"{what} {n}")
        for (n, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            if b.dtype == torch.int64:
                assert torch.equal(b, c), n
            else:
                assert_close(b, c, dtype, f"{what} step {i} {n}", kind="conv")


def _optimizer_step(m):
    with torch.no_grad():
        for p in m.parameters():
            p.sub_(0.1 * torch.ones_like(p))


def _new_parameter(m):
    m.conv2.weight = nn.Parameter(m.conv2.weight.detach() * 0.5)
    m.bn4.bias = nn.Parameter(m.bn4.bias.detach() + 1)


def _data_swapped(m):  # same Parameter object, other data (as Module.to() does)
    m.conv1.weight.data = m.conv1.weight.data.flip(0).contiguous()


def _buffer_replaced(m):
    m.bn3.running_mean = m.bn3.running_mean + 0.5


def _eps_and_momentum(m):
    m.bn1.eps, m.bn2.momentum = 0.5, None


def _frozen(m):
    m.conv1.weight.requires_grad_(False)
    m.bn2.weight.requires_grad_(False)


def _stride(m):
    m.conv1.padding = (2, 2)
    m.conv1.dilation = (2, 2)


CHANGES = {"optimizer_step": _optimizer_step, "new_parameter": _new_parameter, "data_swapped": _data_swapped,
           "buffer_replaced": _buffer_replaced, "eps_and_momentum": _eps_and_momentum, "frozen": _frozen,
           "dilation": _stride}


@pytest.mark.parametrize("change", list(CHANGES))
def test_bound_training_follows_every_change(change):
    ref, model = _pair()
    _step_and_compare(model, ref, X, "before")
    assert all(m._prepared.train is not None for m in _fused(model))  # later steps ran bound
    CHANGES[change](ref)
    CHANGES[change](model)
    _step_and_compare(model, ref, X, change)


@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd"])
def test_bound_training_float64_tracks_torch(algo):
    ref, model = _pair(torch.float64, algo)
    _step_and_compare(model, ref, X.double(), algo, steps=3)


def test_bound_training_generic_backend_closures():
    """A backend without its own bind_conv_bn_train (numba) binds the table's kernels
    (Backend.bind_conv_bn_train), whose closures make the outputs themselves."""
    pytest.importorskip("numba")
    ref, model = _pair(torch.float64, "direct", "numba")
    _step_and_compare(model, ref, X[:2].double(), "numba", steps=2)
    assert any(m._prepared.train is not None for m in _fused(model))


def test_bound_training_follows_input_dtype_and_mode():
    ref, model = _pair()
    _step_and_compare(model, ref, X, "batch 4")
    _step_and_compare(model, ref, X[:3], "batch 3")  # another size: the full path, then bound again
    with torch.no_grad():  # a forward without gradients in training mode moves the running statistics
        assert_close(model(X), ref(X), torch.float32, "no_grad in training", kind="conv")
    _step_and_compare(model, ref, X.to(memory_format=torch.channels_last), "channels_last")
    model64, ref64 = copy.deepcopy(model).double(), copy.deepcopy(ref).double()
    model64.load_state_dict(ref64.state_dict())  # the same start (their float32 histories differ by rounding)
    _step_and_compare(model64, ref64, X.double(), "double")
    _step_and_compare(model, ref, X, "the original after its copy moved")
    model.eval(), ref.eval()
    with torch.no_grad():
        assert_close(model(X), ref(X), torch.float32, "eval after bound training", kind="conv")


def test_bound_training_running_stats_versions_follow():
    """The kernels update the running statistics in place: their version counters move, so the
    eval path's prepared weights (keyed by versions) are rebuilt after training forwards."""
    _, model = _pair()
    bn = model.bn1
    before = (bn.running_mean._version, bn.running_var._version)
    for _ in range(3):
        model(X).sum().backward()
    assert bn.running_mean._version > before[0] and bn.running_var._version > before[1]


def test_conv_bn_relu_module_trains_bound():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU())
    fused = PN.ConvBNReLU2d.from_modules(*copy.deepcopy(ref)[:2])
    model = nn.Sequential(fused)
    _step_and_compare(model, ref, X, "ConvBNReLU2d", steps=3)
    assert fused._bound.train is not None
    with torch.no_grad():
        fused.conv.weight.mul_(-1.0)
        ref[0].weight.mul_(-1.0)
    _step_and_compare(model, ref, X, "ConvBNReLU2d weight edited")
