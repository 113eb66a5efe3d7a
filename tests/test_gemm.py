"""pyconv._C.gemm (the packed GEMM under im2col and Winograd) against numpy, float32/float64, odd
sizes around the 6x16 / 6x8 register tiles and the KC=320 / MC / NC cache blocks, all transposes."""
import itertools

import numpy as np
import pytest

import pyconv
from pyconv import _C

SIZES = [(1, 1, 1), (7, 17, 1), (1, 100, 7), (17, 1, 100), (6, 16, 256), (7, 17, 257), (100, 33, 513),
         (13, 1000, 19), (1000, 7, 33), (97, 2100, 300)]


def rel_err(a, b):
    return np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("mnk", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_numpy(mnk, ta, tb, dtype):
    M, N, K = mnk
    rng = np.random.default_rng(M * 1000003 + N * 101 + K)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    c = np.full((M, N), np.nan, dtype)  # beta=0 must never read c
    _C.gemm(a, b, c, ta, tb)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    assert rel_err(c, want) < (1e-5 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mnk", [(7, 17, 300), (64, 40, 5)], ids=str)
def test_gemm_alpha_beta(mnk, dtype):
    M, N, K = mnk
    rng = np.random.default_rng(1)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    c = c0.copy()
    _C.gemm(a, b, c, False, False, -0.5, 2.0)
    want = -0.5 * (a.astype(np.float64) @ b) + 2.0 * c0
    assert rel_err(c, want) < (1e-5 if dtype == np.float32 else 1e-13)


def test_gemm_empty_and_zero_k():
    c = np.full((3, 4), np.nan, np.float32)
    _C.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c)
    assert (c == 0).all()
    c = np.ones((3, 4))
    _C.gemm(np.zeros((3, 0)), np.zeros((0, 4)), c, beta=3.0)
    assert (c == 3).all()
    _C.gemm(np.zeros((0, 5)), np.zeros((5, 4)), np.zeros((0, 4)))


@pytest.mark.parametrize("threads", [1, 3])
def test_gemm_thread_counts(threads):
    old = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        rng = np.random.default_rng(2)
        a, b = rng.standard_normal((50, 70)), rng.standard_normal((70, 3))
        c = np.full((50, 3), np.nan)
        _C.gemm(a, b, c)
        assert rel_err(c, a @ b) < 1e-13
    finally:
        _C.set_num_threads(old)


def test_gemm_rejects_bad_buffers():
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(pyconv.PyConvError, match="inner dimensions"):
        _C.gemm(a, np.ones((3, 5), np.float32), np.empty((3, 5), np.float32))
    with pytest.raises(pyconv.PyConvError, match="c is"):
        _C.gemm(a, b, np.empty((3, 4), np.float32))
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        _C.gemm(a, b, np.empty((3, 5), np.float64))
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        _C.gemm(a.astype(np.int32), b, np.empty((3, 5), np.float32))
    with pytest.raises(pyconv.PyConvError, match="contiguous"):
        _C.gemm(np.ones((4, 3), np.float32).T, b, np.empty((3, 5), np.float32))
    with pytest.raises(pyconv.PyConvError, match="read-only"):
        c = np.empty((3, 5), np.float32)
        c.flags.writeable = False
        _C.gemm(a, b, c)
    with pytest.raises(pyconv.PyConvError, match="2-D"):
        _C.gemm(np.ones(3, np.float32), b, np.empty((3, 5), np.float32))
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(pyconv.PyConvError, match="overlap"):
        _C.gemm(sq, sq, sq)
