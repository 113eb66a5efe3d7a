"""The contract every floor of pyconv shares: problem shapes, algorithm names, and the rules that
say which algorithm can run which problem. It imports nothing else from pyconv.

Layering (each floor imports only what is below it):

    problem     this module: ConvShape / PoolShape / BatchNormShape (the N,C,H,W,K,R,S,P,Q vocabulary,
                field order = csrc/common/shapes.h), algorithm names, the Winograd validity and tile
                rules, and the Winograd transform matrices (the one table; csrc/common/winograd_matrices.h
                is generated from it by scripts/gen_winograd_header.py, and a test keeps them equal).
    kernels     csrc/ (pyconv._C, _C_cuda) and kernels/ (pyconv.kernels: numba CPU and numba.cuda with
                their host-side orchestration): raw buffers + a shape from here; no argument checks.
    memory      pyconv.memory: the host cache that large CPU kernel outputs come from (over pyconv._C).
    backends    pyconv.backends: the Backend contract (kernel table, name, device, algorithms,
                can_run) and one registry of instances. Capability lives there.
    autotune    policy: algo='auto' from a rule or a measurement; asks backends' can_run.
    ops         torch.library custom ops (autograd, fake tensors); pyconv._args validates once.
    functional / nn / convert   the public face.
    bench       pyconv-bench.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Dict, NamedTuple, Optional, Tuple

# ------------------------------------------------------------------------------------- shapes ---


class ConvShape(NamedTuple):
    """A convolution problem; same field order as the C++ pyconv::ConvShape."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    G: int
    stride_h: int
    stride_w: int
    pad_h: int  # top
    pad_w: int  # left
    dil_h: int
    dil_w: int

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the direct algorithm (the convention for every algorithm's GFLOP/s)."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.G) * self.R * self.S


class PoolShape(NamedTuple):
    """A pooling problem over N*C planes of H x W; output P x Q."""

    N: int
    C: int
    H: int
    W: int
    P: int
    Q: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int


class BatchNormShape(NamedTuple):
    """Batch norm over N x C x L (L = product of the spatial sizes)."""

    N: int
    C: int
    L: int


# ------------------------------------------------------------------------- algorithm names ---

WINOGRAD_ALGOS = ("winograd", "winograd_2x2", "winograd_4x4")
# Every convolution algorithm a backend can implement, in the order 'auto' and the tests list them.
CONV_ALGOS = ("direct", "im2col") + WINOGRAD_ALGOS
# What a user may pass as algo=.
ALGOS = ("auto",) + CONV_ALGOS
# A plan may name the passes' algorithms apart: "<forward>/<gradients>" or "<forward>/<grad-input>/
# <grad-weight>" (what 'auto' picks where one kernel wins a pass and not the others: "direct/im2col",
# "direct/direct/im2col"); a single name runs every pass.
PASS_SEP = "/"


def pass_algos(plan: str) -> Tuple[str, str, str]:
    """(forward, grad-input, grad-weight) algorithms of a plan: "a" -> (a, a, a), "a/b" -> (a, b, b),
    "a/b/c" -> (a, b, c). More parts stay in the last one (resolve_conv_algo refuses them)."""
    parts = plan.split(PASS_SEP, 2)
    if len(parts) == 1:
        return plan, plan, plan
    if len(parts) == 2:
        return parts[0], parts[1], parts[1]
    return parts[0], parts[1], parts[2]

# Activations a fused epilogue applies (y = act(conv + bias [+ residual])); the kernels take the index.
ACTIVATIONS = ("none", "relu", "relu6")

# The ops of the backend kernel table (pyconv.backends.base.Backend) that can_run is asked about.
CONV_OPS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")


def winograd_unsupported(shape: ConvShape) -> Optional[str]:
    """Why Winograd F(m x m, 3 x 3) cannot run this shape, or None."""
    if (shape.R, shape.S) != (3, 3):
        return f"it needs a 3x3 kernel, got {shape.R}x{shape.S}"
    if (shape.stride_h, shape.stride_w) != (1, 1):
        return f"it needs stride 1, got stride ({shape.stride_h}, {shape.stride_w})"
    if (shape.dil_h, shape.dil_w) != (1, 1):
        return f"it needs dilation 1, got dilation ({shape.dil_h}, {shape.dil_w})"
    return None


def algo_unsupported(algo: str, shape: ConvShape) -> Optional[str]:
    """Why the algorithm, on any backend, cannot run this shape (None: it can). direct and im2col
    run every valid shape."""
    if algo in WINOGRAD_ALGOS:
        return winograd_unsupported(shape)
    if algo not in CONV_ALGOS:
        return f"unknown algorithm; expected one of {ALGOS}"
    return None


# Winograd F(m x m, 3 x 3): "winograd" takes m=4 (4x fewer multiplications than direct against 2.25x
# for m=2) from 16x16 outputs on; below, where 4x4 tiles are partly padding, from WINOGRAD_MIN_TILES4
# 4x4 tiles per call on: with fewer, too few tiles share each transformed filter (36*K*C values, built
# every call) and the transforms of grad-weight's reduction lose. Measured (2-core EPYC, 2 threads,
# ms, F(4x4) vs F(2x2), forward / grad-input / grad-weight): batch 8 (128 tiles) 14x14x256 4.6 vs
# 6.0 / 4.6 vs 5.4 / 5.1 vs 7.4, 13x13x256 5.4 vs 6.1 / 5.4 vs 6.9 / 5.8 vs 7.5, 14x14x64 0.49 vs
# 0.65 / 0.49 vs 0.66 / 0.62 vs 0.95; batch 8 at 12x12 (72 tiles) level, 10x10x64 (72) and 8x8x64
# (32) F(2x2) ahead; batch 1-2 at 14x14 (16-32 tiles) F(2x2) ahead (256 channels, batch 1: 2.0 vs
# 1.5 / 1.9 vs 1.6 / 3.1 vs 1.2). Every backend takes m from here.
# Small filters (Cin x Kout per group up to 128 x 128: U of 36 x K x C values fits a core's L2) take
# m=4 from WINOGRAD_SMALL_FILTER_MIN_TILES4 tiles on, since grad-weight's slot schedule runs a few
# tiles in parallel: measured (ms, F(2x2) vs F(4x4), forward + grad-input + grad-weight) 8x64x8x8
# (32 tiles) 0.74 vs 0.57, 8x32x8x8 0.41 vs 0.31, 8x128x8x8 1.96 vs 1.61, 8x64x12x12 1.41 vs 1.10,
# 4x128x14x14 3.1 vs 2.3; 1x64x14x14 (16 tiles) 0.49 vs 0.60; larger filters stay at 128 tiles
# (2x256x14x14, 32 tiles: 6.8 vs 7.2).
WINOGRAD_TILE_SWITCH = 16
WINOGRAD_MIN_TILES4 = 128
WINOGRAD_SMALL_FILTER = 128 * 128
WINOGRAD_SMALL_FILTER_MIN_TILES4 = 32
# With the transformed filters prepared once (inference), the filter transform no longer argues for
# m=2 on small outputs; what is left is reading U (36 x K x C for m=4 against 16 x K x C) once per
# call, which needs enough 4x4 tiles to share it. Measured (prepared filters, 2 threads, ms, F(2x2)
# vs F(4x4)): batch 8: 14x14x256 5.0 vs 3.8, 7x7x512 8.7 vs 5.9, 8x8x64 0.196 vs 0.139. Batch 1-2,
# min of 8 alternating runs: 16 tiles (batch 1 at 14x14) F(4x4) ahead at every width, 32 -> 512
# channels (256: 0.96 vs 0.67, 512: 4.0 vs 3.6, 64: 0.11 vs 0.07); 9 tiles (12x12) split (64 and 128
# channels F(4x4), 256 and 512 F(2x2): 0.76 vs 0.89); 4-8 tiles (7x7, 8x8) F(2x2) (7x7x512 1.6 vs
# 3.3, batch 2 2.2 vs 3.3).
WINOGRAD_PREPARED_MIN_TILES4 = 16
WINOGRAD_TILE = {"winograd_2x2": 2, "winograd_4x4": 4}


def winograd_tile(algo: str, shape: ConvShape, prepared: bool = False) -> int:
    """The output tile m an algo name runs with on this shape; prepared: the transformed filters are
    kept between calls (inference)."""
    if algo in WINOGRAD_TILE:
        return WINOGRAD_TILE[algo]
    if min(shape.P, shape.Q) >= WINOGRAD_TILE_SWITCH:
        return 4
    tiles4 = shape.N * -(-shape.P // 4) * -(-shape.Q // 4)
    if prepared:
        return 4 if tiles4 >= WINOGRAD_PREPARED_MIN_TILES4 else 2
    small = shape.C // shape.G * (shape.K // shape.G) <= WINOGRAD_SMALL_FILTER
    return 4 if tiles4 >= (WINOGRAD_SMALL_FILTER_MIN_TILES4 if small else WINOGRAD_MIN_TILES4) else 2


# ------------------------------------------------------------------ Winograd transform matrices ---

Matrix = Tuple[Tuple[Fraction, ...], ...]


class WinogradMatrices(NamedTuple):
    """F(m x m, 3 x 3) (Lavin & Gray 2016): Y = A^T [ (G g G^T) . (B^T d B) ] A on alpha x alpha input
    tiles, alpha = m + 2. Exact rationals; kernels take them as float64."""

    m: int
    points: Tuple[Fraction, ...]  # interpolation points (plus the point at infinity)
    BT: Matrix  # alpha x alpha
    G: Matrix  # alpha x 3
    AT: Matrix  # m x alpha


def _matrix(rows) -> Matrix:
    return tuple(tuple(Fraction(v) for v in row) for row in rows)


_F = Fraction
# Points 0, 1, -1 (m=2) and 0, 1, -1, 1/2, -2 (m=4): small magnitudes and, for m=4, a reciprocal
# pair, so the transforms' coefficients (and the float32 rounding they amplify) stay small; the
# usual choice (Lavin & Gray 2016; Barabasz et al. 2020 study how the points set the error).
WINOGRAD: Dict[int, WinogradMatrices] = {
    2: WinogradMatrices(
        m=2,
        points=(_F(0), _F(1), _F(-1)),
        BT=_matrix([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]),
        G=_matrix([[1, 0, 0], [_F(1, 2), _F(1, 2), _F(1, 2)], [_F(1, 2), _F(-1, 2), _F(1, 2)], [0, 0, 1]]),
        AT=_matrix([[1, 1, 1, 0], [0, 1, -1, 1]]),
    ),
    4: WinogradMatrices(
        m=4,
        points=(_F(0), _F(1), _F(-1), _F(1, 2), _F(-2)),
        BT=_matrix([[2, -3, -4, 3, 2, 0], [0, -2, 1, 5, 2, 0], [0, -2, 5, -1, -2, 0],
                    [0, 2, 1, -2, -1, 0], [0, 1, -2, -1, 2, 0], [0, 2, -3, -4, 3, 2]]),
        G=_matrix([[_F(1, 2), 0, 0], [_F(1, 6), _F(1, 6), _F(1, 6)], [_F(1, 6), _F(-1, 6), _F(1, 6)],
                   [_F(16, 15), _F(8, 15), _F(4, 15)], [_F(1, 30), _F(-1, 15), _F(2, 15)], [0, 0, _F(1, 2)]]),
        AT=_matrix([[1, 1, 1, 1, 1, 0], [0, 1, -1, _F(1, 2), -2, 0], [0, 1, 1, _F(1, 4), 4, 0],
                    [0, 1, -1, _F(1, 8), -8, 1]]),
    ),
}
