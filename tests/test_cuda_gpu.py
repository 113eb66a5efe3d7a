"""The CUDA C++ backend on a real device: the shared convolution testbed (tests/testbed.py, every case,
algorithm and dtype) through pyconv._C_cuda on torch CUDA tensors, the emulated suite's pooling and
batch-norm cases (tests/pool_bn_checks.py), plus the full functional path (custom op, autograd, the
caller's stream) and cupy input. Skipped without a GPU (conftest)."""
import pytest
import torch
import torch.nn.functional as F

import checks
import pool_bn_checks
import pyconv.functional as PF
import testbed
from pyconv import backends
from pyconv.problem import CONV_ALGOS

pytestmark = pytest.mark.gpu
DTYPES = testbed.DTYPES
TOL32 = checks.TOLERANCES["gpu"][0]
# Larger problems than the emulator can take: a real layer, grouped Winograd, a strided implicit GEMM.
BIG = [(8, 64, 28, 28, 96, 3, 3, dict(padding=1)), (4, 32, 14, 14, 32, 3, 3, dict(groups=2, padding=1)),
       (8, 64, 28, 28, 128, 3, 3, dict(padding=1, stride=2))]
POOL_CASES = [
    # (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
    (2, 3, 9, 11, 3, 2, 1, 1, False),
    (1, 2, 10, 7, (3, 2), (2, 1), (1, 0), 1, True),
    (1, 3, 12, 12, 3, 3, 1, 2, False),
    (2, 2, 5, 6, 2, None, 0, 1, True),
]


def cuda_table():
    cuda = backends.REGISTRY["cuda"]
    if not cuda.is_available():
        pytest.skip(cuda.unavailable_reason())
    return cuda


def assert_close(actual, expected, dtype, what):
    checks.assert_close(actual, expected, dtype, what, kind="gpu")


@pytest.mark.parametrize("algo", CONV_ALGOS)
@pytest.mark.parametrize("dtype", DTYPES, ids=testbed.DTYPE_IDS)
@pytest.mark.parametrize("case", testbed.CASES + BIG, ids=testbed.case_id)
def test_conv2d_kernels(case, dtype, algo):
    testbed.check_table(cuda_table(), algo, dtype, case, device="cuda", tol32=TOL32)


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", DTYPES, ids=testbed.DTYPE_IDS)
@pytest.mark.parametrize("case", testbed.GPU_EDGES[:5] + BIG[2:], ids=testbed.case_id)
def test_conv2d_functional(case, dtype, algo):
    cuda_table()
    N, C, H, W, K, R, S, kw = case
    g = kw.get("groups", 1)
    ts = [torch.randn(N, C, H, W, dtype=dtype, device="cuda"), torch.randn(K, C // g, R, S, dtype=dtype, device="cuda"),
          torch.randn(K, dtype=dtype, device="cuda")]
    mine = [t.clone().requires_grad_() for t in ts]
    ref = [t.clone().requires_grad_() for t in ts]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # kernels must follow the caller's stream
        y = PF.conv2d(*mine, algo=algo, backend="cuda", **kw)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, mine, gy)
    stream.synchronize()
    with torch.backends.cudnn.flags(allow_tf32=False):
        yr = F.conv2d(*ref, **kw)
        want = torch.autograd.grad(yr, ref, gy)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), (y, *got), (yr, *want)):
        assert_close(a.cpu(), e.detach().cpu(), dtype, f"{algo} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=testbed.DTYPE_IDS)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(case, dtype):
    pool_bn_checks.check_max_pool2d(cuda_table(), "cuda", dtype, case, TOL32)


@pytest.mark.parametrize("dtype", DTYPES, ids=testbed.DTYPE_IDS)
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[7] == 1])
def test_avg_pool2d(case, cip, div, dtype):
    pool_bn_checks.check_avg_pool2d(cuda_table(), "cuda", dtype, case, cip, div, TOL32)


@pytest.mark.parametrize("dtype", DTYPES, ids=testbed.DTYPE_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", [(4, 3, 5, 7), (300, 2), (2, 5, 3), (16, 64, 28, 28)])
def test_batch_norm(size, affine, training, dtype):
    pool_bn_checks.check_batch_norm(cuda_table(), "cuda", dtype, size, training, affine, True, TOL32)


def test_cupy_input():
    cp = pytest.importorskip("cupy")
    cuda_table()
    x, w = cp.random.randn(2, 3, 8, 8).astype(cp.float32), cp.random.randn(4, 3, 3, 3).astype(cp.float32)
    y = PF.conv2d(x, w, padding=1, backend="cuda", algo="im2col")
    assert isinstance(y, cp.ndarray)
    yr = F.conv2d(torch.from_dlpack(x), torch.from_dlpack(w), padding=1)
    assert_close(torch.from_dlpack(y).cpu(), yr.cpu(), torch.float32, "cupy output")
