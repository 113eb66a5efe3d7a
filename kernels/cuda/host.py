"""Host-side orchestration of the numba.cuda kernels (this folder): launch shapes, scratch buffers and
the kernel sequence of each pass, over torch tensors (the numba-CPU twin is kernels/cpu, whose
entry points take flat arrays). The backend pyconv.backends.numba_cuda is the thin table over it.

On a GPU the functions receive torch CUDA tensors: they are wrapped zero-copy through
__cuda_array_interface__ and the kernels launch on torch's current stream of the tensors' device
(numba.cuda.external_stream), unsynchronized, as every torch op. Host tensors are copied to the
device and the outputs back (synchronously): that is the path under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), where numba.cuda.is_available() is true with no GPU, and what the tests use.
Arguments arrive validated (algorithm and shape included): nothing is re-checked here.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import cuda

from pyconv.problem import ACTIVATIONS

from . import batch_norm, conv_direct, conv_im2col, pool, relu, winograd
from ..cpu.winograd import tile_of  # the tile rule with its memory guard, shared with the CPU twin
from ._common import THREADS, TILE, blocks_for

_SCALAR = {torch.float32: np.float32, torch.float64: np.float64}


class _Launch:
    """Device views of one call's tensors and the stream its kernels go on. Use as a context:
    on exit, outputs that were host tensors get their results copied back."""

    def __init__(self, like):
        self.on_gpu = like.is_cuda
        self.device = like.device
        self.scalar = _SCALAR[like.dtype]
        self.back = []

    def __enter__(self):
        if self.on_gpu:
            self.gpu_ctx = cuda.gpus[self.device.index if self.device.index is not None else 0]
            self.gpu_ctx.__enter__()
            self.stream = cuda.external_stream(torch.cuda.current_stream(self.device).cuda_stream)
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
            return cuda.as_cuda_array(t.view(-1), sync=False)
        host = t.numpy().reshape(-1)
        dev = cuda.to_device(host, stream=self.stream)
        if out:
            self.back.append((dev, host))
        return dev

    def scratch(self, n, dtype):
        if self.on_gpu:  # torch's caching allocator, ordered on the same stream
            tdt = torch.float32 if dtype == np.float32 else torch.float64
            return cuda.as_cuda_array(torch.empty(max(1, n), dtype=tdt, device=self.device), sync=False)
        return cuda.device_array(max(1, n), dtype=dtype, stream=self.stream)

    def run(self, kernel, grid, block, *args):
        kernel[grid, block, self.stream](*args)


def _geo(shape):
    return tuple(int(v) for v in shape)


# ----------------------------------------------------------------------------- convolution ---

def _gemm_grid(M, Ncol, groups_chunks):
    return (-(-Ncol // TILE), -(-M // TILE), groups_chunks), (TILE, TILE)


def conv2d_forward(x, w, b, y, shape, algo, stats=None):
    """stats: optional (2, K) float64 <- per-channel sum and sum of squares of y (a block-reduction
    kernel after the conv)."""
    s = shape
    if y.numel() == 0:
        if stats is not None:
            stats.zero_()
        return
    with _Launch(x) as L:
        xd, wd, bd, yd = L.arr(x), L.arr(w), L.arr(b), L.arr(y, out=True)
        if algo.startswith("winograd"):
            _winograd_conv(L, tile_of(algo, s), xd, wd, False, bd, b is not None, yd, s.N, s.G,
                           s.C // s.G, s.K // s.G, s.H, s.W, s.P, s.Q, s.pad_h, s.pad_w)
        elif algo == "direct":
            fwd = conv_direct.build(L.scalar).forward
            L.run(fwd, blocks_for(y.numel()), THREADS, xd, wd, bd, b is not None, yd, _geo(s))
        else:
            gemm = conv_im2col.build(L.scalar).forward
            Kg, Cg = s.K // s.G, s.C // s.G
            kdim = Cg * s.R * s.S
            grid, block = _gemm_grid(Kg, s.N * s.P * s.Q, s.G)
            L.run(gemm, grid, block, wd, xd, yd, bd, b is not None, _geo(s), Kg, s.N * s.P * s.Q,
                  kdim, max(kdim, 1), s.G)
        if stats is not None:
            sums = batch_norm.build(L.scalar).channel_sums
            L.run(sums, blocks_for(s.K * THREADS), THREADS, yd, L.arr(stats, out=True), s.N, s.K, s.P * s.Q)


def conv2d_backward_input(gy, w, gx, shape, algo):
    s = shape
    if algo.startswith("winograd"):
        return _winograd_backward_input(gy, w, gx, s, algo)
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        gyd, wd, gxd = L.arr(gy), L.arr(w), L.arr(gx, out=True)
        if algo == "direct":
            bwi = conv_direct.build(L.scalar).backward_input
            L.run(bwi, blocks_for(gx.numel()), THREADS, gyd, wd, gxd, _geo(s))
        else:
            gemm = conv_im2col.build(L.scalar).backward_input
            Kg, Cg = s.K // s.G, s.C // s.G
            kdim = Kg * s.R * s.S
            grid, block = _gemm_grid(Cg, s.N * s.H * s.W, s.G)
            L.run(gemm, grid, block, wd, gyd, gxd, L.scratch(1, L.scalar), False, _geo(s), Cg, s.N * s.H * s.W,
                  kdim, max(kdim, 1), s.G)


# grad-weight im2col: the N*P*Q reduction is split into chunks of at least this many terms
_WGRAD_CHUNK_MIN = 1024
_WGRAD_CHUNKS_MAX = 64


def _reduction_chunks(terms: int, max_chunks: int):
    """(chunks, terms per chunk) for a grad-weight reduction: each chunk a whole number of GEMM tiles,
    at most max_chunks of them (the grid's z limit)."""
    chunks = max(1, min(_WGRAD_CHUNKS_MAX, terms // _WGRAD_CHUNK_MIN, max_chunks))
    kchunk = max(1, -(-(-(-terms // chunks)) // TILE)) * TILE
    return max(1, -(-terms // kchunk)), kchunk


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    s = shape
    with _Launch(gy) as L:
        xd, gyd = L.arr(x), L.arr(gy)
        direct = conv_direct.build(L.scalar)
        PQ = s.P * s.Q
        if gb is not None and gb.numel():
            L.run(direct.bias_grad, blocks_for(s.K * THREADS), THREADS, gyd, L.arr(gb, out=True), s.N, s.K, PQ)
        if gw is None or gw.numel() == 0:
            return
        gwd = L.arr(gw, out=True)
        if algo.startswith("winograd"):
            return _winograd_weight_grad(L, xd, gyd, gwd, s, algo)
        if algo == "direct":
            L.run(direct.backward_weight, blocks_for(gw.numel() * THREADS), THREADS, xd, gyd, gwd, _geo(s))
            return
        im2col = conv_im2col.build(L.scalar)
        Kg, Cg = s.K // s.G, s.C // s.G
        kdim = s.N * PQ
        crs = Cg * s.R * s.S
        chunks, kchunk = _reduction_chunks(kdim, 65535 // s.G)
        part = L.scratch(chunks * gw.numel(), L.scalar)
        grid, block = _gemm_grid(Kg, crs, s.G * chunks)
        L.run(im2col.backward_weight, grid, block, gyd, xd, part, L.scratch(1, L.scalar), False, _geo(s), Kg, crs, kdim,
              kchunk, s.G)
        L.run(im2col.reduce_chunks, blocks_for(gw.numel()), THREADS, part, chunks, gw.numel(), gwd)


# ------------------------------------------------------------------------------- winograd ---

def _winograd_conv(L, m, xd, wd, transposed, bd, has_bias, yd, N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w):
    """Filter transform, input transform, batched GEMM over the (m+2)^2 positions, output transform."""
    th, tw = -(-P // m), -(-Q // m)
    tiles = N * th * tw
    if tiles == 0 or Kout == 0:
        return
    k = winograd.build(L.scalar, m)
    nb = G * (m + 2) ** 2
    U = L.scratch(nb * Kout * Cin, L.scalar)
    V = L.scratch(nb * Cin * tiles, L.scalar)
    Mo = L.scratch(nb * Kout * tiles, L.scalar)
    L.run(k.transform_filters, blocks_for(G * Kout * Cin), THREADS, wd, transposed, G, Cin, Kout, U)
    L.run(k.transform_input, blocks_for(G * Cin * tiles), THREADS, xd, G, Cin, H, W, th, tw, tiles, pad_h, pad_w, V)
    grid, block = _gemm_grid(Kout, tiles, nb)
    L.run(k.gemm, grid, block, U, V, Mo, bd, False, (Cin, Kout, tiles, nb), Kout, tiles, Cin, max(Cin, 1), nb)
    L.run(k.transform_output, blocks_for(G * Kout * tiles), THREADS, Mo, bd, has_bias, G, Kout, P, Q, th, tw, tiles, yd)


def _winograd_backward_input(gy, w, gx, s, algo):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        _winograd_conv(L, tile_of(algo, s), L.arr(gy), L.arr(w), True, L.scratch(1, L.scalar), False,
                       L.arr(gx, out=True), s.N, s.G, s.K // s.G, s.C // s.G, s.P, s.Q, s.H, s.W,
                       2 - s.pad_h, 2 - s.pad_w)


def _winograd_weight_grad(L, xd, gyd, gwd, s, algo):
    """Input and grad-output transforms, the tile-sum GEMM in chunks, chunk sum + G^T . G."""
    m = tile_of(algo, s)
    Cg, Kg = s.C // s.G, s.K // s.G
    th, tw = -(-s.P // m), -(-s.Q // m)
    tiles = s.N * th * tw
    k = winograd.build(L.scalar, m)
    nb = s.G * (m + 2) ** 2
    V = L.scratch(nb * Cg * tiles, L.scalar)
    Z = L.scratch(nb * Kg * tiles, L.scalar)
    chunks, kchunk = _reduction_chunks(tiles, 65535 // nb)
    part = L.scratch(chunks * nb * Kg * Cg, L.scalar)
    if tiles:
        L.run(k.transform_input, blocks_for(s.G * Cg * tiles), THREADS, xd, s.G, Cg, s.H, s.W, th, tw, tiles, s.pad_h, s.pad_w, V)
        L.run(k.transform_grad_output, blocks_for(s.G * Kg * tiles), THREADS, gyd, s.G, Kg, s.P, s.Q, th, tw, tiles, Z)
    grid, block = _gemm_grid(Kg, Cg, nb * chunks)
    L.run(k.weight_grad_gemm, grid, block, Z, V, part, L.scratch(1, L.scalar), False, (Cg, Kg, tiles, nb), Kg, Cg, tiles, kchunk,
          nb)
    L.run(k.weight_grad_finish, blocks_for(s.G * Kg * Cg), THREADS, part, chunks, s.G, Cg, Kg, gwd)


# --------------------------------------------------------------------------------- pooling ---

def _pool_geo(s):
    return (s.H, s.W, s.P, s.Q, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w)


def max_pool2d_forward(x, y, indices, shape):
    if y.numel() == 0:
        return
    with _Launch(x) as L:
        kern = pool.build(L.scalar).max_forward
        L.run(kern, blocks_for(y.numel()), THREADS, L.arr(x), L.arr(y, out=True), L.arr(indices, out=True),
              shape.N * shape.C, _pool_geo(shape))


def max_pool2d_backward(gy, indices, gx, shape):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        kern = pool.build(L.scalar).max_backward
        L.run(kern, blocks_for(gx.numel()), THREADS, L.arr(gy), L.arr(indices), L.arr(gx, out=True),
              shape.N * shape.C, _pool_geo(shape))


def avg_pool2d_forward(x, y, shape, count_include_pad, divisor_override):
    if y.numel() == 0:
        return
    with _Launch(x) as L:
        kern = pool.build(L.scalar).avg_forward
        L.run(kern, blocks_for(y.numel()), THREADS, L.arr(x), L.arr(y, out=True), shape.N * shape.C,
              _pool_geo(shape), bool(count_include_pad), int(divisor_override))


def avg_pool2d_backward(gy, gx, shape, count_include_pad, divisor_override):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        kern = pool.build(L.scalar).avg_backward
        L.run(kern, blocks_for(gx.numel()), THREADS, L.arr(gy), L.arr(gx, out=True), shape.N * shape.C,
              _pool_geo(shape), bool(count_include_pad), int(divisor_override))


# ------------------------------------------------------------------------------ batch norm ---

def batch_norm_forward(x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape, training,
                       momentum, eps, relu=False, stats=None):
    if shape.C == 0:
        return
    has_running = running_mean is not None and running_var is not None
    with _Launch(x) as L:
        kern = batch_norm.build(L.scalar).forward
        L.run(kern, blocks_for(shape.C * THREADS), THREADS, L.arr(x), L.arr(weight), weight is not None,
              L.arr(bias), bias is not None, L.arr(running_mean, out=True), L.arr(running_var, out=True), has_running,
              L.arr(y, out=True), L.arr(save_mean, out=True), L.arr(save_invstd, out=True), shape.N, shape.C,
              shape.L, bool(training), float(momentum if momentum is not None else 0.0), float(eps),
              L.arr(stats) if stats is not None else L.scratch(1, np.float64), stats is not None, bool(relu))


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training, relu_output=None):
    if shape.C == 0:
        return
    with _Launch(x) as L:
        kern = batch_norm.build(L.scalar).backward
        L.run(kern, blocks_for(shape.C * THREADS), THREADS, L.arr(gy), L.arr(x), L.arr(weight),
              weight is not None, L.arr(save_mean), L.arr(save_invstd), L.arr(gx, out=True), gx is not None,
              L.arr(gw, out=True), gw is not None, L.arr(gb, out=True), gb is not None, shape.N, shape.C, shape.L,
              bool(training), L.arr(relu_output), relu_output is not None)


# -------------------------------------------------------------------------------------- relu ---

def activation_forward(x, residual, activation):
    if x.numel() == 0:
        return
    with _Launch(x) as L:
        L.run(relu.activation_forward, blocks_for(x.numel()), THREADS, L.arr(x, out=True), L.arr(residual),
              residual is not None, ACTIVATIONS.index(activation))


def relu_backward(gz, z, gx):
    if gx.numel() == 0:
        return
    with _Launch(gx) as L:
        L.run(relu.backward, blocks_for(gx.numel()), THREADS, L.arr(gz), L.arr(z), L.arr(gx, out=True))
