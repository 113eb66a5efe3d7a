"""conv2d forward, training step (fwd+bwd), fused conv+BN+ReLU and the inference epilogue
(prepared weights, bias + residual + ReLU), per algorithm and backend."""
import pytest

from conftest import SUITE, impls, run
from pyconv.bench import suites

LAYERS = suites.conv_layers(SUITE)


@pytest.mark.parametrize("impl", impls("conv2d"))
@pytest.mark.parametrize("layer", LAYERS, ids=[lay.name for lay in LAYERS])
def test_conv2d_forward(benchmark, layer, impl):
    run(benchmark, "conv2d", layer, impl)


@pytest.mark.parametrize("impl", impls("conv2d_train"))
@pytest.mark.parametrize("layer", LAYERS, ids=[lay.name for lay in LAYERS])
def test_conv2d_training_step(benchmark, layer, impl):
    run(benchmark, "conv2d_train", layer, impl)


@pytest.mark.parametrize("impl", impls("conv_bn_relu"))
@pytest.mark.parametrize("layer", LAYERS, ids=[lay.name for lay in LAYERS])
def test_conv_bn_relu_forward(benchmark, layer, impl):
    run(benchmark, "conv_bn_relu", layer, impl)


@pytest.mark.parametrize("impl", impls("conv2d_infer"))
@pytest.mark.parametrize("layer", LAYERS, ids=[lay.name for lay in LAYERS])
def test_conv2d_inference_epilogue(benchmark, layer, impl):
    run(benchmark, "conv2d_infer", layer, impl)
