"""pyconv.ops.common.call: the ops' implementations are called directly where torch's dispatcher adds
nothing (eager, no autograd), through the op's autograd formula as a torch.autograd.Function where
only autograd is involved, and through torch.ops.pyconv.* whenever a dispatch mode, a function mode,
a functorch transform or a tensor subclass is; all give torch's result."""
import pytest
import torch
import torch.nn.functional as F

import pyconv.functional as PF
from conftest import DispatchLog
from pyconv.ops import common


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts, per op, the calls that bypass the dispatcher (call()'s direct path: the registered
    implementation, or the kernel step of arguments the functional layer already planned)."""
    counts = {}
    direct = common._direct

    def counted(name, args, planned):
        counts[name] = counts.get(name, 0) + 1
        return direct(name, args, planned)
    monkeypatch.setattr(common, "_direct", counted)
    return counts


def _ops(x, w, training_bn):
    rm, rv, one, zero = (f(4, dtype=x.dtype) for f in (torch.zeros, torch.ones, torch.ones, torch.zeros))
    return {
        "conv2d": lambda: PF.conv2d(x, w, padding=1, backend="cpp"),
        "max_pool2d_values": lambda: PF.max_pool2d(x, 2, backend="cpp"),
        "avg_pool2d": lambda: PF.avg_pool2d(x, 2, backend="cpp"),
        "batch_norm": lambda: PF.batch_norm(x, rm, rv, training=training_bn, backend="cpp"),
        "conv_bn_relu": lambda: PF.conv_bn_relu(x, w, None, one, zero, rm, rv, padding=1, training=training_bn,
                                                backend="cpp"),
    }


def _refs(x, w, training_bn):
    rm, rv, one, zero = (f(4, dtype=x.dtype) for f in (torch.zeros, torch.ones, torch.ones, torch.zeros))
    return {
        "conv2d": lambda: F.conv2d(x, w, padding=1),
        "max_pool2d_values": lambda: F.max_pool2d(x, 2),
        "avg_pool2d": lambda: F.avg_pool2d(x, 2),
        "batch_norm": lambda: F.batch_norm(x, rm, rv, training=training_bn),
        "conv_bn_relu": lambda: F.relu(F.batch_norm(F.conv2d(x, w, padding=1), rm, rv, one, zero,
                                                    training=training_bn)),
    }


@pytest.mark.parametrize("training_bn", [True, False])
def test_eager_without_autograd_calls_the_implementation_directly(direct_calls, training_bn):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64), torch.randn(4, 4, 3, 3, generator=g,
                                                                                dtype=torch.float64)
    refs = _refs(x, w, training_bn)
    for name, fn in _ops(x, w, training_bn).items():
        before = direct_calls.get(name, 0)
        torch.testing.assert_close(fn(), refs[name](), rtol=1e-10, atol=1e-10)
        assert direct_calls.get(name, 0) == before + 1, name


def test_eager_autograd_uses_the_ops_autograd_function(direct_calls):
    """Eager calls that need autograd and nothing else get the op's own formula as one
    torch.autograd.Function node (common.register_autograd), without the dispatcher; under a
    dispatch mode the same call goes through torch.ops.pyconv.* with the same gradients."""
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = PF.conv2d(x, w, padding=1, backend="cpp")
    assert type(y.grad_fn).__name__.startswith("conv2d_autograd"), type(y.grad_fn).__name__
    assert "conv2d" not in direct_calls  # the planned kernel step runs inside the Function
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    # the backward op runs with grad mode off: direct
    assert direct_calls.get("conv2d_backward") == 1
    rx, rw = torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    with DispatchLog() as log:
        yd = PF.conv2d(x, w, padding=1, backend="cpp")
    assert "pyconv.conv2d.default" in log.ops and not type(yd.grad_fn).__name__.startswith("conv2d_autograd")
    torch.testing.assert_close(torch.autograd.grad(yd.sum(), (x, w)), (gx, gw))
    with torch.no_grad():
        PF.conv2d(x, w, padding=1, backend="cpp")
    assert direct_calls.get("conv2d") == 1


def test_modes_and_transforms_go_through_the_dispatcher(direct_calls):
    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 4, 3, 3)
    with DispatchLog() as log:
        PF.conv2d(x, w, padding=1, backend="cpp")
    assert "pyconv.conv2d.default" in log.ops and "conv2d" not in direct_calls
    with torch.device("cpu"):  # a function mode
        PF.conv2d(x, w, padding=1, backend="cpp")
    assert "conv2d" not in direct_calls
    with torch.inference_mode():  # no mode, no autograd: direct
        PF.conv2d(x, w, padding=1, backend="cpp")
    assert direct_calls.get("conv2d") == 1


def test_forward_mode_ad_raises_instead_of_a_zero_tangent():
    """The ops have no forward-mode formula; torch would hand them a zero (jvp) or no (dual tensor)
    tangent silently, so pyconv refuses."""
    import torch.autograd.forward_ad as fwAD

    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda a: PF.conv2d(a, w, padding=1, backend="cpp"), (x,), (torch.randn_like(x),))
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            PF.max_pool2d(fwAD.make_dual(x, torch.randn_like(x)), 2, backend="cpp")
        PF.conv2d(x, w, padding=1, backend="cpp")  # a plain tensor inside a dual level is fine


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_matches_torch():
    """vmap runs the ops slice by slice (torch's batching fallback) and matches torch."""
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    xs = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    got = torch.func.vmap(lambda a: PF.conv2d(a, w, padding=1, backend="cpp"))(xs)
    torch.testing.assert_close(got, torch.func.vmap(lambda a: F.conv2d(a, w, padding=1))(xs))


def test_parameters_take_the_eager_paths(direct_calls):
    """A layer's weights are nn.Parameters (a Tensor subclass without __torch_function__): they do
    not send a call through the dispatcher, with or without autograd."""
    x, w = torch.randn(2, 4, 6, 6), torch.nn.Parameter(torch.randn(4, 4, 3, 3))
    with torch.no_grad():
        PF.conv2d(x, w, padding=1, backend="cpp")
    assert direct_calls.get("conv2d") == 1
    y = PF.conv2d(x, w, padding=1, backend="cpp")
    assert type(y.grad_fn).__name__.startswith("conv2d_autograd"), type(y.grad_fn).__name__
    y.sum().backward()
    wr = w.detach().clone().requires_grad_()
    F.conv2d(x, wr, padding=1).sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)
