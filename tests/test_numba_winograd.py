"""Winograd in the numba backend: float32 accuracy against a float64 reference on real 3x3 layers (as
tests/test_winograd.py does for cpp), F(4x4) at most a small multiple of the direct algorithm's error,
and the kernel entry points rejecting shapes Winograd cannot run. tests/test_conv2d.py runs the shared
grid (groups, padding, every gradient, gradcheck) on the numba winograd algos."""
import pytest
import torch

import pyconv
from pyconv import PyConvError, _args, backends
from test_winograd import errors as winograd_errors

pytestmark = pytest.mark.skipif("numba" not in pyconv.available_backends(), reason="numba backend unavailable")

# ResNet-18 3x3 stride-1 layers, spatial sizes cut down for test time (C, K, H=W).
LAYERS = [("resnet18.layer1", 64, 64, 14), ("resnet18.layer4", 256, 256, 7)]
ALGOS = ["winograd_2x2", "winograd_4x4", "winograd"]


def errors(algo, C, K, HW):
    return winograd_errors(algo, C, K, HW, backend="numba")


@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_float32_accuracy_vs_float64(layer):
    name, C, K, HW = layer
    direct = errors("direct", C, K, HW)
    for algo in ALGOS:
        fwd, gin, gwt = errors(algo, C, K, HW)
        assert fwd <= 2e-5 and gin <= 2e-5, (algo, fwd, gin)
        assert fwd <= 4 * direct[0] and gin <= 4 * direct[1], (algo, fwd, gin, direct)
        assert gwt <= 2e-7 * (2 * HW * HW) ** 0.5 * 8, (algo, gwt)


@pytest.mark.parametrize("algo", ALGOS)
def test_kernel_rejects_unsupported_shapes(algo):
    """The backend's own entry points refuse (PyConvError naming the algo and the reason), not only the op layer."""
    nb = backends.load("numba")
    for R, stride, dil, why in [(5, 1, 1, "3x3"), (3, 2, 1, "stride 1"), (3, 1, 2, "dilation 1")]:
        x, w = torch.randn(1, 2, 12, 12), torch.randn(2, 2, R, R)
        s = _args.conv2d_shape(x, w, None, _args.conv2d_params((R, R), stride, 0, dil, 1))
        y = torch.empty(1, 2, s.P, s.Q)
        with pytest.raises(PyConvError, match=rf"{algo}.*{why}"):
            nb.conv2d_forward(x, w, None, y, s, algo)
        with pytest.raises(PyConvError, match=rf"{algo}.*{why}"):
            nb.conv2d_backward_input(y, w, torch.empty_like(x), s, algo)
        with pytest.raises(PyConvError, match=rf"{algo}.*{why}"):
            nb.conv2d_backward_weight(x, y, torch.empty_like(w), None, s, algo)
