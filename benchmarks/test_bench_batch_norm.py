"""batch_norm forward in training mode on each conv layer's output, per backend (GB/s)."""
import pytest

from conftest import SUITE, impls, run
from pyconv.bench import suites

LAYERS = suites.conv_layers(SUITE)


@pytest.mark.parametrize("impl", impls("batch_norm"))
@pytest.mark.parametrize("layer", LAYERS, ids=[lay.name for lay in LAYERS])
def test_batch_norm_training(benchmark, layer, impl):
    run(benchmark, "batch_norm", layer, impl)
