"""pyconv.nn layers and pyconv.convert against the torch model they replace."""
import copy

import pytest
import torch
import torch.nn.functional as F

import pyconv
import pyconv.nn as PN
from models import TinyResNet


def test_conv2d_layer_is_a_drop_in():
    ref = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = PN.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, algo="direct")
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_conv2d_layer_padding_modes(mode):
    ref = torch.nn.Conv2d(3, 5, 3, padding=1, padding_mode=mode)
    ours = PN.Conv2d(3, 5, 3, padding=1, padding_mode=mode)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 8, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def _train_step(model, x, target):
    model.zero_grad()
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fuse", [False, True])
def test_convert_matches_torch_in_training(fuse):
    torch.manual_seed(0)
    ref = TinyResNet()
    model = pyconv.convert(copy.deepcopy(ref), fuse=fuse)
    swapped = {type(m).__name__ for m in model.modules()}
    assert "Conv2d" in swapped and not any(type(m) is torch.nn.Conv2d for m in model.modules())
    x, t = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):  # running statistics evolve identically too
        l_ref, g_ref = _train_step(ref, x, t)
        l_ours, g_ours = _train_step(model, x, t)
        torch.testing.assert_close(l_ours, l_ref, rtol=1e-4, atol=1e-5)
        for name, g in g_ref.items():
            key = name if name in g_ours else None
            if key is not None:
                torch.testing.assert_close(g_ours[key], g, rtol=1e-3, atol=1e-4)
    ref_sd, ours_sd = ref.state_dict(), model.state_dict()
    for k, v in ours_sd.items():
        if k in ref_sd:
            torch.testing.assert_close(v, ref_sd[k], rtol=1e-4, atol=1e-5)
    ref.eval(), model.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


def test_convert_shares_parameters_and_keeps_state_dict_keys():
    ref = TinyResNet()
    keys = list(ref.state_dict())
    model = pyconv.convert(ref, fuse=False)
    assert list(model.state_dict()) == keys
    assert model.stem[0].weight is ref.stem[0].weight


@pytest.mark.parametrize("mode", ["eval", "train", "mixed"])
def test_convert_keeps_every_modules_mode(mode):
    """A model converted in eval mode (the usual inference flow: model.eval(), then convert) infers
    on the eval path: its fused layers and fx's new containers take the mode of the layers they
    stand for (they were left training, and every call folded batch norm again: CIFAR ResNet-20 at
    batch 1 ran at half torch's speed)."""
    torch.manual_seed(0)
    ref = TinyResNet()
    if mode == "eval":
        ref.eval()
    elif mode == "mixed":  # frozen batch norm in a training model
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    want = {name: m.training for name, m in ref.named_modules()}
    model = pyconv.convert(copy.deepcopy(ref))
    fused = [m for m in model.modules() if isinstance(m, PN.FusedConv)]
    assert fused
    for name, m in model.named_modules():
        if name in want:
            assert m.training == want[name], name
    for f in fused:
        assert f.training == (f.bn if f.bn is not None else f.conv).training
    if mode == "eval":
        x = torch.randn(2, 1, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
        assert all(f.prepared_bytes() > 0 for f in fused)  # the prepared (eval) path ran


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError):
        pyconv.convert(lambda x: x)


def test_torch_compile_fullgraph_in_inference():
    """Eval without gradients (prepared weights and bound calls in eager) traced by torch.compile:
    the fold and the fused op go into the graph; a converted model, a Conv2d layer and pyconv.prepare."""
    torch.manual_seed(0)
    model = pyconv.convert(TinyResNet(), fuse=True).eval()
    layer = pyconv.nn.Conv2d(1, 4, 3, padding=1).eval()
    p = pyconv.prepare(torch.randn(4, 1, 3, 3), torch.randn(4), padding=1)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for fn in (model, layer, lambda v: p(v, None, "relu")):
            want = [fn(x) for _ in range(3)][-1]  # eager first: the bound calls exist when tracing starts
            torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x), want, rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = pyconv.convert(TinyResNet(), fuse=True)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    model.train()
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    state = copy.deepcopy(model.state_dict())
    ye = model(xe)
    ye.sum().backward()
    model.load_state_dict(state)
    yc = compiled(xc)
    yc.sum().backward()
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)
