"""The numba_cuda backend: pyconv.kernels.cuda (kernels/cuda), numba.cuda kernels.

On a GPU the table functions receive torch CUDA tensors: they are wrapped zero-copy through
__cuda_array_interface__ and the kernels launch on torch's current stream of the tensors' device
(numba.cuda.external_stream), unsynchronized, as every torch op. Host tensors are copied to the
device and the outputs back (synchronously): that is the path under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), where numba.cuda.is_available() is true with no GPU, and what the tests use.
numba is imported on first use, so importing pyconv does not pay for numba.cuda.
"""
from __future__ import annotations

import numpy as np

from ..autotune import check_winograd, winograd_tile

IMPLEMENTED = True
# im2col = implicit GEMM with shared-memory tiles; winograd*: F(2x2,3x3) / F(4x4,3x3) (kernels/cuda/winograd.py)
CONV_ALGOS = ("direct", "im2col", "winograd", "winograd_2x2", "winograd_4x4")

_SCALAR = {"torch.float32": np.float32, "torch.float64": np.float64}


def _cuda():
    from numba import cuda

    return cuda


def is_available() -> bool:
    try:
        return bool(_cuda().is_available())
    except Exception:  # numba missing or broken CUDA driver: unavailable, with the reason below
        return False


def unavailable_reason() -> str:
    try:
        cuda = _cuda()
    except ImportError as e:
        return f"numba is not importable: {e}"
    if cuda.is_available():
        return ""
    return "numba.cuda sees no CUDA device (set NUMBA_ENABLE_CUDASIM=1 for the simulator)"


def _k(name):
    import importlib

    return importlib.import_module(f"pyconv.kernels.cuda.{name}")


class _Launch:
    """Device views of one call's tensors and the stream its kernels go on. Use as a context:
    on exit, outputs that were host tensors get their results copied back."""

    def __init__(self, like):
        import torch

        self.cuda = _cuda()
        self.torch = torch
        self.on_gpu = like.is_cuda
        self.device = like.device
        self.scalar = _SCALAR[str(like.dtype)]
        self.back = []

    def __enter__(self):
        cuda = self.cuda
        if self.on_gpu:
            self.gpu_ctx = cuda.gpus[self.device.index if self.device.index is not None else 0]
            self.gpu_ctx.__enter__()
            self.stream = cuda.external_stream(self.torch.cuda.current_stream(self.device).cuda_stream)
        else:
            self.gpu_ctx = None
            self.stream = cuda.stream()
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None and self.back:
                for dev, host in self.back:
                    dev.copy_to_host(host, stream=self.stream)
                self.stream.synchronize()
        finally:
            if self.gpu_ctx is not None:
                self.gpu_ctx.__exit__(*exc)

    def arr(self, t, out=False):
        """Flat device array over tensor t (None -> a 1-element dummy, since every kernel argument
        needs one array type). out: the kernel writes it (copied back when t is a host tensor)."""
        if t is None:
            return self.scratch(1, self.scalar)
        t = t.detach()
        if t.is_cuda:
            return self.cuda.as_cuda_array(t.view(-1), sync=False)
        host = t.numpy().reshape(-1)
        dev = self.cuda.to_device(host, stream=self.stream)
        if out:
            self.back.append((dev, host))
        return dev

    def scratch(self, n, dtype):
        if self.on_gpu:  # torch's caching allocator, ordered on the same stream
            tdt = self.torch.float32 if dtype == np.float32 else self.torch.float64
            return self.cuda.as_cuda_array(self.torch.empty(max(1, n), dtype=tdt, device=self.device), sync=False)
        return self.cuda.device_array(max(1, n), dtype=dtype, stream=self.stream)

    def run(self, kernel, grid, block, *args):
        kernel[grid, block, self.stream](*args)


def _geo(shape):
    return tuple(int(v) for v in shape)


def _threads():
    return _k("_common").THREADS


def _blocks(work):
    return _k("_common").blocks_for(work)


# ----------------------------------------------------------------------------- convolution ---

def _check_algo(algo):
    if algo not in CONV_ALGOS:
        raise NotImplementedError(f"algo={algo!r} is not implemented in the numba_cuda backend; "
                                  f"implemented: {CONV_ALGOS}")


def _gemm_grid(M, Ncol, groups_chunks):
    T = _k("_common").TILE
    return (-(-Ncol // T), -(-M // T), groups_chunks), (T, T)


def conv2d_forward(x, w, b, y, shape, algo, stats=None):
    """stats: optional (2, K) float64 <- per-channel sum and sum of squares of y (a block-reduction
    kernel after the conv)."""
    _check_algo(algo)
    s = shape
    if algo.startswith("winograd"):
        check_winograd(algo, s)
    if y.numel() == 0:
        if stats is not None:
            stats.zero_()
        return
    with _Launch(x) as L:
        xd, wd, bd, yd = L.arr(x), L.arr(w), L.arr(b), L.arr(y, out=True)
        if algo.startswith("winograd"):
            _winograd_conv(L, winograd_tile(algo, s), xd, wd, False, bd, b is not None, yd, s.N, s.G,
                           s.C // s.G, s.K // s.G, s.H, s.W, s.P, s.Q, s.pad_h, s.pad_w)
        elif algo == "direct":
            fwd = _k("conv_direct").build(L.scalar)[0]
            L.run(fwd, _blocks(y.numel()), _threads(), xd, wd, bd, b is not None, yd, _geo(s))
        else:
            gemm = _k("conv_im2col").build(L.scalar)[0]
            Kg, Cg = s.K // s.G, s.C // s.G
            kdim = Cg * s.R * s.S
            grid, block = _gemm_grid(Kg, s.N * s.P * s.Q, s.G)
            L.run(gemm, grid, block, wd, xd, yd, bd, b is not None, _geo(s), Kg, s.N * s.P * s.Q,
                  kdim, max(kdim, 1), s.G)
        if stats is not None:
            sums = _k("batch_norm").build(L.scalar)[2]
            L.run(sums, _blocks(s.K * _threads()), _threads(), yd, L.arr(stats, out=True), s.N, s.K, s.P * s.Q)


def conv2d_backward_input(gy, w, gx, shape, algo):
    _check_algo(algo)
    s = shape
    if algo.startswith("winograd"):
        return _winograd_backward_input(gy, w, gx, s, algo)
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        gyd, wd, gxd = L.arr(gy), L.arr(w), L.arr(gx, out=True)
        if algo == "direct":
            bwi = _k("conv_direct").build(L.scalar)[1]
            L.run(bwi, _blocks(gx.numel()), _threads(), gyd, wd, gxd, _geo(s))
        else:
            gemm = _k("conv_im2col").build(L.scalar)[1]
            Kg, Cg = s.K // s.G, s.C // s.G
            kdim = Kg * s.R * s.S
            grid, block = _gemm_grid(Cg, s.N * s.H * s.W, s.G)
            L.run(gemm, grid, block, wd, gyd, gxd, L.scratch(1, L.scalar), False, _geo(s), Cg, s.N * s.H * s.W,
                  kdim, max(kdim, 1), s.G)


# grad-weight im2col: the N*P*Q reduction is split into chunks of at least this many terms
_WGRAD_CHUNK_MIN = 1024
_WGRAD_CHUNKS_MAX = 64


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    _check_algo(algo)
    s = shape
    if algo.startswith("winograd"):
        check_winograd(algo, s)
    with _Launch(gy) as L:
        xd, gyd = L.arr(x), L.arr(gy)
        direct = _k("conv_direct").build(L.scalar)
        PQ = s.P * s.Q
        if gb is not None and gb.numel():
            L.run(direct[3], _blocks(s.K * _threads()), _threads(), gyd, L.arr(gb, out=True), s.N, s.K, PQ)
        if gw is None or gw.numel() == 0:
            return
        gwd = L.arr(gw, out=True)
        if algo.startswith("winograd"):
            return _winograd_weight_grad(L, xd, gyd, gwd, s, algo)
        if algo == "direct":
            L.run(direct[2], _blocks(gw.numel() * _threads()), _threads(), xd, gyd, gwd, _geo(s))
            return
        _, _, gemm, reduce_chunks = _k("conv_im2col").build(L.scalar)
        Kg, Cg = s.K // s.G, s.C // s.G
        kdim = s.N * PQ
        crs = Cg * s.R * s.S
        chunks = max(1, min(_WGRAD_CHUNKS_MAX, kdim // _WGRAD_CHUNK_MIN, 65535 // s.G))
        T = _k("_common").TILE
        per_chunk = -(-kdim // chunks)
        kchunk = max(1, -(-per_chunk // T)) * T  # a whole number of tiles per chunk
        chunks = max(1, -(-kdim // kchunk))
        part = L.scratch(chunks * gw.numel(), L.scalar)
        grid, block = _gemm_grid(Kg, crs, s.G * chunks)
        L.run(gemm, grid, block, gyd, xd, part, L.scratch(1, L.scalar), False, _geo(s), Kg, crs, kdim, kchunk, s.G)
        L.run(reduce_chunks, _blocks(gw.numel()), _threads(), part, chunks, gw.numel(), gwd)


# ------------------------------------------------------------------------------- winograd ---

def _winograd_conv(L, m, xd, wd, transposed, bd, has_bias, yd, N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w):
    """Filter transform, input transform, batched GEMM over the (m+2)^2 positions, output transform."""
    th, tw = -(-P // m), -(-Q // m)
    tiles = N * th * tw
    if tiles == 0 or Kout == 0:
        return
    tf, ti, gemm, to = _k("winograd").build(L.scalar, m)[:4]
    nb = G * (m + 2) ** 2
    U = L.scratch(nb * Kout * Cin, L.scalar)
    V = L.scratch(nb * Cin * tiles, L.scalar)
    Mo = L.scratch(nb * Kout * tiles, L.scalar)
    L.run(tf, _blocks(G * Kout * Cin), _threads(), wd, transposed, G, Cin, Kout, U)
    L.run(ti, _blocks(G * Cin * tiles), _threads(), xd, G, Cin, H, W, th, tw, tiles, pad_h, pad_w, V)
    grid, block = _gemm_grid(Kout, tiles, nb)
    L.run(gemm, grid, block, U, V, Mo, bd, False, (Cin, Kout, tiles, nb), Kout, tiles, Cin, max(Cin, 1), nb)
    L.run(to, _blocks(G * Kout * tiles), _threads(), Mo, bd, has_bias, G, Kout, P, Q, th, tw, tiles, yd)


def _winograd_backward_input(gy, w, gx, s, algo):
    check_winograd(algo, s)
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        _winograd_conv(L, winograd_tile(algo, s), L.arr(gy), L.arr(w), True, L.scratch(1, L.scalar), False,
                       L.arr(gx, out=True), s.N, s.G, s.K // s.G, s.C // s.G, s.P, s.Q, s.H, s.W,
                       2 - s.pad_h, 2 - s.pad_w)


def _winograd_weight_grad(L, xd, gyd, gwd, s, algo):
    """Input and grad-output transforms, the tile-sum GEMM in chunks, chunk sum + G^T . G."""
    m = winograd_tile(algo, s)
    Cg, Kg = s.C // s.G, s.K // s.G
    th, tw = -(-s.P // m), -(-s.Q // m)
    tiles = s.N * th * tw
    ti, tgo, gemm, finish = (_k("winograd").build(L.scalar, m)[i] for i in (1, 4, 5, 6))
    nb = s.G * (m + 2) ** 2
    V = L.scratch(nb * Cg * tiles, L.scalar)
    Z = L.scratch(nb * Kg * tiles, L.scalar)
    T = _k("_common").TILE
    chunks = max(1, min(_WGRAD_CHUNKS_MAX, tiles // _WGRAD_CHUNK_MIN, 65535 // nb))
    kchunk = max(1, -(-(-(-tiles // chunks)) // T)) * T  # a whole number of GEMM tiles per chunk
    chunks = max(1, -(-tiles // kchunk))
    part = L.scratch(chunks * nb * Kg * Cg, L.scalar)
    if tiles:
        L.run(ti, _blocks(s.G * Cg * tiles), _threads(), xd, s.G, Cg, s.H, s.W, th, tw, tiles, s.pad_h, s.pad_w, V)
        L.run(tgo, _blocks(s.G * Kg * tiles), _threads(), gyd, s.G, Kg, s.P, s.Q, th, tw, tiles, Z)
    grid, block = _gemm_grid(Kg, Cg, nb * chunks)
    L.run(gemm, grid, block, Z, V, part, L.scratch(1, L.scalar), False, (Cg, Kg, tiles, nb), Kg, Cg, tiles, kchunk,
          nb)
    L.run(finish, _blocks(s.G * Kg * Cg), _threads(), part, chunks, s.G, Cg, Kg, gwd)


# --------------------------------------------------------------------------------- pooling ---

def _pool_geo(s):
    return (s.H, s.W, s.P, s.Q, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w)


def max_pool2d_forward(x, y, indices, shape):
    if y.numel() == 0:
        return
    with _Launch(x) as L:
        kern = _k("pool").build(L.scalar)[0]
        L.run(kern, _blocks(y.numel()), _threads(), L.arr(x), L.arr(y, out=True), L.arr(indices, out=True),
              shape.N * shape.C, _pool_geo(shape))


def max_pool2d_backward(gy, indices, gx, shape):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        kern = _k("pool").build(L.scalar)[1]
        L.run(kern, _blocks(gx.numel()), _threads(), L.arr(gy), L.arr(indices), L.arr(gx, out=True),
              shape.N * shape.C, _pool_geo(shape))


def avg_pool2d_forward(x, y, shape, count_include_pad, divisor_override):
    if y.numel() == 0:
        return
    with _Launch(x) as L:
        kern = _k("pool").build(L.scalar)[2]
        L.run(kern, _blocks(y.numel()), _threads(), L.arr(x), L.arr(y, out=True), shape.N * shape.C,
              _pool_geo(shape), bool(count_include_pad), int(divisor_override))


def avg_pool2d_backward(gy, gx, shape, count_include_pad, divisor_override):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        kern = _k("pool").build(L.scalar)[3]
        L.run(kern, _blocks(gx.numel()), _threads(), L.arr(gy), L.arr(gx, out=True), shape.N * shape.C,
              _pool_geo(shape), bool(count_include_pad), int(divisor_override))


# ------------------------------------------------------------------------------ batch norm ---

def batch_norm_forward(x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape, training,
                       momentum, eps, relu=False, stats=None):
    if shape.C == 0:
        return
    has_running = running_mean is not None and running_var is not None
    with _Launch(x) as L:
        kern = _k("batch_norm").build(L.scalar)[0]
        L.run(kern, _blocks(shape.C * _threads()), _threads(), L.arr(x), L.arr(weight), weight is not None,
              L.arr(bias), bias is not None, L.arr(running_mean, out=True), L.arr(running_var, out=True), has_running,
              L.arr(y, out=True), L.arr(save_mean, out=True), L.arr(save_invstd, out=True), shape.N, shape.C,
              shape.L, bool(training), float(momentum if momentum is not None else 0.0), float(eps),
              L.arr(stats) if stats is not None else L.scratch(1, np.float64), stats is not None, bool(relu))


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training, relu_output=None):
    if shape.C == 0:
        return
    with _Launch(x) as L:
        kern = _k("batch_norm").build(L.scalar)[1]
        L.run(kern, _blocks(shape.C * _threads()), _threads(), L.arr(gy), L.arr(x), L.arr(weight),
              weight is not None, L.arr(save_mean), L.arr(save_invstd), L.arr(gx, out=True), gx is not None,
              L.arr(gw, out=True), gw is not None, L.arr(gb, out=True), gb is not None, shape.N, shape.C, shape.L,
              bool(training), L.arr(relu_output), relu_output is not None)


# -------------------------------------------------------------------------------------- relu ---

def relu_forward(x):
    if x.numel() == 0:
        return
    with _Launch(x) as L:
        L.run(_k("relu").forward, _blocks(x.numel()), _threads(), L.arr(x, out=True))


def relu_backward(gz, z, gx):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        L.run(_k("relu").backward, _blocks(gx.numel()), _threads(), L.arr(gz), L.arr(z), L.arr(gx, out=True))
