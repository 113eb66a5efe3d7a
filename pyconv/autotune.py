"""Which convolution algorithm runs: names checked against the shape, algo='auto' resolved.

A named algorithm that cannot do the shape raises PyConvError naming the algorithm and the reason;
one the backend does not have yet raises NotImplementedError. 'auto' never fails on a valid shape.
"""
from __future__ import annotations

from typing import Optional

from . import backends
from ._args import ConvShape
from ._errors import PyConvError

ALGOS = ("auto", "direct", "im2col", "winograd", "winograd_2x2", "winograd_4x4")


def winograd_unsupported(shape: ConvShape) -> Optional[str]:
    """Why Winograd F(m x m, 3 x 3) cannot run this shape, or None."""
    if (shape.R, shape.S) != (3, 3):
        return f"it needs a 3x3 kernel, got {shape.R}x{shape.S}"
    if (shape.stride_h, shape.stride_w) != (1, 1):
        return f"it needs stride 1, got stride ({shape.stride_h}, {shape.stride_w})"
    if (shape.dil_h, shape.dil_w) != (1, 1):
        return f"it needs dilation 1, got dilation ({shape.dil_h}, {shape.dil_w})"
    return None


def _heuristic(shape: ConvShape, have) -> str:
    """Shape rule for 'auto': Winograd for 3x3 stride-1 layers with enough channels, the GEMM for
    1x1 and wide layers, direct for depthwise and everything else."""
    depthwise = shape.G == shape.C and shape.C // shape.G == 1
    cg, kg = shape.C // shape.G, shape.K // shape.G
    if not depthwise and winograd_unsupported(shape) is None and min(cg, kg) >= 16:
        for a in ("winograd", "winograd_4x4", "winograd_2x2"):
            if a in have:
                return a
    if not depthwise and "im2col" in have and cg * shape.R * shape.S >= 64:
        return "im2col"
    return "direct"


def resolve_conv_algo(algo: str, shape: ConvShape, backend: str) -> str:
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str, got {type(algo).__name__}")
    if algo not in ALGOS:
        raise PyConvError(f"algo={algo!r}: unknown algorithm; expected one of {ALGOS}")
    have = backends.load(backend).CONV_ALGOS
    if algo == "auto":
        return _heuristic(shape, have)
    if algo.startswith("winograd"):
        why = winograd_unsupported(shape)
        if why:
            raise PyConvError(f"algo={algo!r} cannot run this convolution: {why}")
    if algo not in have:
        raise NotImplementedError(f"algo={algo!r} is not implemented for backend={backend!r} yet")
    return algo
