"""The numba backend's pooling and batch-norm kernels, called through its kernel table, against
torch.nn.functional: outputs, argmax indices, every gradient, running statistics; float32 and float64."""
import pool_bn_checks as checks
import pytest
import torch

from pyconv import backends

pytestmark = pytest.mark.skipif("numba" not in backends.available_backends(), reason="numba not available")
DTYPES = [torch.float32, torch.float64]
TOL32 = 1e-5


def nb():
    return backends.load("numba")


POOLS = [
    # (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
    (2, 3, 8, 9, 2, None, 0, 1, False),
    (1, 4, 11, 10, 3, 2, 1, 1, False),
    (2, 2, 11, 10, 3, 2, 1, 1, True),
    (1, 3, 12, 13, (3, 2), (2, 1), (1, 0), (2, 3), True),
    (1, 2, 7, 7, 7, 1, 3, 1, False),
    (1, 1, 1, 1, 1, 1, 0, 1, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d(dtype, case):
    checks.check_max_pool2d(nb(), "cpu", dtype, case, TOL32)


def test_max_pool2d_all_minus_inf():
    checks.check_max_pool2d_all_minus_inf(nb(), "cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [c for c in POOLS if c[7] == 1])
@pytest.mark.parametrize("include_pad,divisor", [(True, None), (False, None), (True, 3)])
def test_avg_pool2d(dtype, case, include_pad, divisor):
    checks.check_avg_pool2d(nb(), "cpu", dtype, case, include_pad, divisor, TOL32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("size", [(4, 3, 5, 6), (2, 5, 7), (3, 4), (1, 2, 1, 3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine,running", [(True, True), (False, True), (True, False)])
def test_batch_norm(dtype, size, training, affine, running):
    if not training and not running:
        pytest.skip("eval needs running statistics")
    checks.check_batch_norm(nb(), "cpu", dtype, size, training, affine, running, TOL32)
