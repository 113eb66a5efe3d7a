"""Sizes past 2^31: shapes whose products (N*K*P*Q, the im2col workspace) overflow 32-bit
integers are described without allocating them, and every size comes out exact (expected values
in Python ints). Requests that cannot be served raise (PyConvError / MemoryError), never crash."""
import numpy as np
import pytest
import torch

import pyconv
from pyconv import PyConvError, _C, _args

MR, KC = 6, 320  # GemmBlocking (csrc/cpu/gemm_driver.h), ISA-independent fields
NC = {"float32": 2048, "float64": 1024}
NR = {"float32": 16, "float64": 8}
ITEMSIZE = {"float32": 4, "float64": 8}


def cdiv(a, b):
    return -(-a // b)


def gemm_ws_elems(M, N, K, nthr, dtype):
    """gemm_workspace_elems: packed A, and one B chunk per thread."""
    k = max(K, 1)
    kc = cdiv(k, cdiv(k, KC))  # gemm_kc: K in equal blocks of at most KC
    panels = max(1, cdiv(N, NR[dtype]))  # gemm_nc: equal N chunks, a multiple of nthr of them,
    chunks = cdiv(cdiv(panels * NR[dtype], NC[dtype]), nthr) * nthr
    if panels >= 2 * nthr * 4:  # and two per thread where each keeps 4 panels
        chunks = max(chunks, 2 * nthr)
    nc = cdiv(panels, min(panels, chunks)) * NR[dtype]
    assert nc <= NC[dtype]
    return cdiv(M, MR) * MR * kc + nthr * nc * kc


# A ResNet-like layer at a huge batch and resolution: N*K*P*Q = 2^36, im2col column matrix 2^32+.
HUGE = dict(N=64, C=512, H=1024, W=1024, K=1024, R=3, S=3, pad=1)


def huge_shape():
    h = HUGE
    params = _args.conv2d_params((h["R"], h["S"]), 1, h["pad"], 1, 1)
    x = torch.empty(h["N"], h["C"], h["H"], h["W"], device="meta")
    w = torch.empty(h["K"], h["C"], h["R"], h["S"], device="meta")
    return _args.conv2d_shape(x, w, None, params)


def test_args_shapes_are_exact_past_2_31():
    s = huge_shape()  # meta tensors: nothing allocated
    assert (s.P, s.Q) == (1024, 1024)
    assert s.N * s.K * s.P * s.Q == 2**36
    assert s.flops == 2 * 64 * 1024 * 1024 * 1024 * 512 * 9
    same = _args.conv2d_shape_of_sizes((64, 512, 1024, 1024), (1024, 512, 3, 3), _args.conv2d_params((3, 3), 1, 1, 1, 1))
    assert same == s
    p = _args.pool2d_shape(torch.empty(2**16, 2**10, 2**12, 2**12, device="meta"), 3, 2, 1, 1, True, "max_pool2d")
    assert (p.P, p.Q) == (2049, 2049) and p.N * p.C * p.P * p.Q == 2**26 * 2049**2


def test_native_conv_shape_and_workspace_exact():
    s = huge_shape()
    cs = _C.ConvShape(*s)
    assert (cs.N, cs.C, cs.K, cs.P, cs.Q) == (s.N, s.C, s.K, s.P, s.Q)
    big = _C.ConvShape(2**20, 3, 2**12, 2**12, 2**10, 1, 1, 2**12, 2**12, 1, 1, 1, 0, 0, 1, 1)
    assert big.N * big.K * big.P * big.Q == 2**54
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(3)
        for dtype in ("float32", "float64"):
            CRS, PQ, NPQ = s.C * 9, s.P * s.Q, s.N * s.P * s.Q
            fwd = gemm_ws_elems(s.K, NPQ, CRS, 3, dtype)
            # grad-input (stride 1: one phase): the GEMM gx[C, N*H*W] = W'[C, K*9] . col(gy), panels only
            dgrad = gemm_ws_elems(s.C, s.N * s.H * s.W, s.K * 9, 3, dtype)
            wgrad = gemm_ws_elems(s.K, CRS, NPQ, 3, dtype)
            for pass_, elems in enumerate((fwd, dgrad, wgrad)):
                got = _C.conv_im2col_workspace_bytes(cs, dtype, pass_)
                assert got == elems * ITEMSIZE[dtype], (dtype, pass_, got, elems * ITEMSIZE[dtype])
    finally:
        pyconv.set_num_threads(before)


def test_native_shape_checks_refuse_overflow():
    lim = 2**40
    with pytest.raises(PyConvError):  # a size out of range
        _C.ConvShape(lim, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1)
    with pytest.raises(PyConvError):  # dilation * (kernel - 1) past int64 if multiplied naively
        _C.ConvShape(1, 1, 2**39, 2**39, 1, 2**39, 2**39, 1, 1, 1, 1, 1, 0, 0, 2**39, 2**39)
    with pytest.raises(PyConvError):  # each size valid, but N*C*H*W overflows int64
        s = _C.ConvShape(2**39, 2**39, 2**39, 2**39, 1, 1, 1, 2**39, 2**39, 1, 1, 1, 0, 0, 1, 1)
        a = np.zeros(1, np.float32)
        _C.conv_direct_forward(s, a, a, None, a)
    a = np.zeros(1, np.float32)
    for pad in (2**62, 2**62 + 1):  # huge padding: 2 * pad must not wrap around to pass the checks
        with pytest.raises(PyConvError):
            _C.max_pool2d_forward(_C.PoolShape(1, 1, 1, 1, 1, 1, 2, 2, 1, 1, pad, pad, 1, 1), a, a, None)


@pytest.mark.parametrize("fn", ["conv_direct_forward", "conv_im2col_forward"])
def test_huge_shape_with_tiny_buffers_is_rejected(fn):
    cs = _C.ConvShape(*huge_shape())
    a = np.zeros(16, np.float32)
    with pytest.raises(PyConvError, match="elements"):
        getattr(_C, fn)(cs, a, a, None, a)
    with pytest.raises(PyConvError, match="elements"):
        _C.conv_im2col_backward_input(cs, a, a, a)
    with pytest.raises(PyConvError, match="elements"):
        _C.conv_winograd_forward(cs, 2, a, a, None, a)


def test_grad_input_of_a_huge_column_matrix_needs_no_column_buffer():
    """A grad-input whose column matrix would hold 8.1e13 elements (>2^48 bytes) runs on GEMM panels."""
    R = P = 3000  # 1x1 input padded by 2999 on each side: C*R*S * P*Q = 8.1e13 elements
    s = _C.ConvShape(1, 1, 1, 1, 1, R, R, P, P, 1, 1, 1, R - 1, R - 1, 1, 1)
    assert _C.conv_im2col_workspace_bytes(s, "float32", 1) < 2**20
    rng = np.random.default_rng(0)
    gy = rng.standard_normal(P * P).astype(np.float32)
    w = rng.standard_normal(R * R).astype(np.float32)
    gx = np.full(1, np.nan, np.float32)
    _C.conv_im2col_backward_input(s, gy, w, gx)
    # gx[0, 0] = sum over taps (r, s) of w[r, s] * gy[R-1-r, R-1-s]
    want = np.dot(w.astype(np.float64), gy[::-1].astype(np.float64))
    assert abs(gx[0] - want) <= 1e-3 * np.sqrt(R * R)
