"""grad-bias gb[k] = sum_{n,p,q} gy[n,k,p,q] is one routine per kernel family (csrc/cpu/sums.h
channel_sums, kernels/cpu/conv_direct.bias_grad, csrc/cuda conv_bias_grad), accumulated in float64
for float32 data, whatever the algorithm and thread count.

The data are multiples of 2^-12 in [0, 1): their float64 sum is exact, so every algorithm must return
exactly float32(exact sum), which a float32 accumulator (rounding once the sum passes 2^12) misses."""
import numpy as np
import pytest

import pyconv

# 3x3, stride 1, pad 1 (Winograd runs it); P*Q = 16900 > one 16384-value chunk of channel_sums.
N, H = 2, 130


def _data(K):
    rng = np.random.default_rng(K)
    x = rng.standard_normal((N, 1, H, H)).astype(np.float32)
    gy = (rng.integers(0, 4096, size=(N, K, H, H)) / 4096).astype(np.float32)
    want = gy.astype(np.float64).sum(axis=(0, 2, 3)).astype(np.float32)
    return x, gy, want


def _shape16(K):
    return (N, 1, H, H, K, 3, 3, H, H, 1, 1, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("K", [1, 3])  # fewer channels than threads, and more
def test_cpp_grad_bias_is_float64_accumulated_for_every_algo(K):
    C = pyconv._C
    x, gy, want = _data(K)
    shape = C.ConvShape(*_shape16(K))
    before = C.get_num_threads()
    try:
        for threads in (1, 2):
            C.set_num_threads(threads)
            for name, run in [("direct", lambda gb: C.conv_direct_backward_weight(shape, x, gy, None, gb)),
                              ("im2col", lambda gb: C.conv_im2col_backward_weight(shape, x, gy, None, gb)),
                              ("winograd_2x2", lambda gb: C.conv_winograd_backward_weight(shape, 2, x, gy, None, gb)),
                              ("winograd_4x4", lambda gb: C.conv_winograd_backward_weight(shape, 4, x, gy, None, gb))]:
                gb = np.full(K, np.nan, dtype=np.float32)
                run(gb)
                np.testing.assert_array_equal(gb, want, err_msg=f"{name}, {threads} threads")
    finally:
        C.set_num_threads(before)


def test_numba_grad_bias_is_float64_accumulated():
    pytest.importorskip("numba")
    from pyconv.kernels.cpu import conv_direct

    K = 3
    _, gy, want = _data(K)
    gb = np.full(K, np.nan, dtype=np.float32)
    conv_direct.bias_grad(gy.reshape(-1), N, K, H * H, gb)
    np.testing.assert_array_equal(gb, want)


def test_cuda_emulated_grad_bias_is_float64_accumulated():
    emu = pytest.importorskip("pyconv._C_cuda_emu")
    K = 3
    x, gy, want = _data(K)

    def buf(a):
        return (a.ctypes.data, a.size)

    for algo in ("direct", "im2col", "winograd_2x2", "winograd_4x4"):
        gb = np.full(K, np.nan, dtype=np.float32)
        if algo.startswith("winograd"):
            emu.conv2d_winograd_backward_weight(int(algo[-1]), "float32", _shape16(K), buf(x), buf(gy), None,
                                                buf(gb), None, 0)
        else:
            emu.conv2d_backward_weight(algo, "float32", _shape16(K), buf(x), buf(gy), None, buf(gb), None, 0)
        np.testing.assert_array_equal(gb, want, err_msg=algo)
