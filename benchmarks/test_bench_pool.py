"""max_pool2d and avg_pool2d forward per backend (GB/s)."""
import pytest

from conftest import SUITE, impls, run
from pyconv.bench import suites

MAX, AVG = suites.pool_layers(SUITE, "max"), suites.pool_layers(SUITE, "avg")


@pytest.mark.parametrize("impl", impls("max_pool2d"))
@pytest.mark.parametrize("layer", MAX, ids=[lay.name for lay in MAX])
def test_max_pool2d(benchmark, layer, impl):
    run(benchmark, "max_pool2d", layer, impl)


@pytest.mark.parametrize("impl", impls("avg_pool2d"))
@pytest.mark.parametrize("layer", AVG, ids=[lay.name for lay in AVG])
def test_avg_pool2d(benchmark, layer, impl):
    run(benchmark, "avg_pool2d", layer, impl)
