"""The numba backend's GEMM (kernels/cpu/gemm.py) against numpy: odd sizes that leave partial 3 x 3
micro-tiles and partial task blocks, reductions longer than one KC step, transposed and strided
views of both factors, accumulate on/off, float32 and float64, and NaN / Inf propagation."""
import numpy as np
import pytest

numba = pytest.importorskip("numba")
from pyconv.kernels.cpu import gemm as ng  # noqa: E402

SIZES = [1, 7, 17, 100, 300]


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(m, k, n) for m in SIZES for k in SIZES for n in SIZES
                                   if (m * k * n) % 7 in (0, 1, 3)] + [(5, 2 * ng.KC_BYTES // 4 + 3, 4)])
def test_matches_numpy(M, K, N, dtype):
    rng = np.random.default_rng(M * 10007 + K * 101 + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    want = A.astype(np.float64) @ B.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    C = np.full((M, N), np.nan, dtype)
    ng.gemm(A, B, C, False)
    assert rel_err(C, want) <= tol
    C0 = rng.standard_normal((M, N)).astype(dtype)
    C = C0.copy()
    ng.gemm(A, B, C, True)
    assert rel_err(C, want + C0) <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(True, False), (False, True), (True, True)])
def test_transposed_and_strided_views(ta, tb, dtype):
    rng = np.random.default_rng(3)
    M, K, N = 17, 300, 100
    A = rng.standard_normal((K, M)).astype(dtype).T if ta else rng.standard_normal((M, 2 * K)).astype(dtype)[:, ::2]
    B = rng.standard_normal((N, K)).astype(dtype).T if tb else rng.standard_normal((K, N + 5)).astype(dtype)[:, 2:N + 2]
    big = np.full((M + 2, N + 9), np.nan, dtype)
    C = big[1:M + 1, 3:N + 3]  # a block of a larger array: row stride != N
    ng.gemm(A, B, C, False)
    want = A.astype(np.float64) @ B.astype(np.float64)
    assert rel_err(C, want) <= (1e-5 if dtype == np.float32 else 1e-13)
    assert np.isnan(big[0]).all() and np.isnan(big[:, :3]).all() and np.isnan(big[:, N + 3:]).all()


def test_empty_reduction_and_nonfinite():
    A = np.zeros((4, 0), np.float32)
    B = np.zeros((0, 5), np.float32)
    C = np.full((4, 5), np.nan, np.float32)
    ng.gemm(A, B, C, False)
    assert (C == 0).all()
    A = np.ones((4, 9), np.float32)
    A[1, 3] = np.nan
    A[2, 4] = np.inf
    B = np.ones((9, 5), np.float32)
    C = np.empty((4, 5), np.float32)
    ng.gemm(A, B, C, False)
    assert (C[0] == 9).all() and (C[3] == 9).all() and np.isnan(C[1]).all() and np.isposinf(C[2]).all()


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_im2col_paths_match_torch(N, groups, stride):
    """conv_im2col's two schedules, called without the backend's small-problem serial switch: with 2
    threads, N=1 splits every step across the threads, N=3 gives runs of 1 and 2 images (grad-weight's
    last chunk short)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from pyconv import _args
    from pyconv.kernels.cpu import conv_im2col

    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        torch.manual_seed(N)
        x = torch.randn(N, 6, 9, 9, dtype=torch.float64)
        w = torch.randn(8, 6 // groups, 3, 3, dtype=torch.float64)
        b = torch.randn(8, dtype=torch.float64)
        s = _args.conv2d_shape(x, w, b, _args.conv2d_params((3, 3), stride, 1, 1, groups))
        kw = dict(stride=stride, padding=1, groups=groups)
        want = F.conv2d(x, w, b, **kw)
        gy = torch.randn_like(want)
        gx_want, gw_want = torch.ops.aten.convolution_backward(gy, x, w, None, [stride] * 2, [1, 1], [1, 1], False,
                                                               [0, 0], groups, [True, True, False])[:2]
        y, gx, gw, gb = (torch.full_like(t, float("nan")) for t in (want, x, w, b))
        flat = [t.numpy().reshape(-1) for t in (x, w, b, y, gy, gx, gw, gb)]
        xf, wf, bf, yf, gyf, gxf, gwf, gbf = flat
        conv_im2col.forward(xf, wf, bf, yf, s)
        conv_im2col.backward_input(gyf, wf, gxf, s)
        conv_im2col.backward_weight(xf, gyf, gwf, gbf, s)
    finally:
        numba.set_num_threads(saved)
    for got, ref in ((y, want), (gx, gx_want), (gw, gw_want), (gb, gy.sum((0, 2, 3)))):
        assert rel_err(got.numpy(), ref.numpy()) <= 1e-12
