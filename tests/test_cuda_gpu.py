"""The CUDA C++ backend on a real device: the emulated suite's cases (tests/test_cuda_emulated.py)
through pyconv._C_cuda on torch CUDA tensors, plus the full functional path (custom op, autograd,
the caller's stream) and cupy input. Skipped without a GPU (conftest)."""
import pytest
import torch
import torch.nn.functional as F

import pyconv.functional as PF
import test_cuda_emulated as E

pytestmark = pytest.mark.gpu


def cuda_table():
    from pyconv.backends import cuda

    if not cuda.is_available():
        pytest.skip(cuda.unavailable_reason())
    return cuda


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", E.CONV_CASES, ids=lambda c: f"{c[:7]}{c[7]}")
def test_conv2d_kernels(case, dtype, algo):
    E.run_conv(cuda_table(), algo, dtype, case, device="cuda")


@pytest.mark.parametrize("algo", ["winograd_2x2", "winograd_4x4", "winograd"])
@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", E.WINOGRAD_CASES + [(8, 64, 28, 28, 96, 3, 3, dict(padding=1)),
                                                     (4, 32, 14, 14, 32, 3, 3, dict(groups=2, padding=1))],
                         ids=lambda c: f"{c[:7]}{c[7]}")
def test_conv2d_winograd_kernels(case, dtype, algo):
    E.run_conv(cuda_table(), algo, dtype, case, device="cuda")


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", E.CONV_CASES + [(8, 64, 28, 28, 128, 3, 3, dict(padding=1, stride=2))],
                         ids=lambda c: f"{c[:7]}{c[7]}")
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
        E.assert_close(a.cpu(), e.detach().cpu(), dtype, f"{algo} {name}")


@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", E.POOL_CASES)
def test_max_pool2d(case, dtype):
    E.test_max_pool2d(case, dtype, table=cuda_table(), device="cuda")


@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("case", E.POOL_CASES)
def test_avg_pool2d(case, cip, div, dtype):
    E.test_avg_pool2d(case, cip, div, dtype, table=cuda_table(), device="cuda")


@pytest.mark.parametrize("dtype", E.DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", [(4, 3, 5, 7), (300, 2), (2, 5, 3), (16, 64, 28, 28)])
def test_batch_norm(size, affine, training, dtype):
    E.test_batch_norm(size, affine, training, dtype, table=cuda_table(), device="cuda")


def test_cupy_input():
    cp = pytest.importorskip("cupy")
    cuda_table()
    x, w = cp.random.randn(2, 3, 8, 8).astype(cp.float32), cp.random.randn(4, 3, 3, 3).astype(cp.float32)
    y = PF.conv2d(x, w, padding=1, backend="cuda", algo="im2col")
    assert isinstance(y, cp.ndarray)
    yr = F.conv2d(torch.from_dlpack(x), torch.from_dlpack(w), padding=1)
    E.assert_close(torch.from_dlpack(y).cpu(), yr.cpu(), torch.float32, "cupy output")
