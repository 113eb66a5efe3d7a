"""The C++ CPU backend: pyconv._C (csrc/cpu through csrc/bindings). Tensors reach the kernels as
zero-copy numpy views; the binding checks every buffer against the shape."""
from __future__ import annotations

import torch

from .. import _C

CONV_ALGOS = ("direct", "im2col")


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def _np(t: torch.Tensor):
    return None if t is None else t.detach().numpy()


def _shape(shape):
    return _C.ConvShape(*shape)


def conv2d_forward(x, w, b, y, shape, algo):
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_forward")(_shape(shape), _np(x), _np(w), _np(b), _np(y))
    raise NotImplementedError(f"algo={algo!r} is not implemented in the cpp backend yet")


def conv2d_backward_input(gy, w, gx, shape, algo):
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_backward_input")(_shape(shape), _np(gy), _np(w), _np(gx))
    raise NotImplementedError(f"algo={algo!r} grad-input is not implemented in the cpp backend yet")


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_backward_weight")(_shape(shape), _np(x), _np(gy), _np(gw), _np(gb))
    raise NotImplementedError(f"algo={algo!r} grad-weight is not implemented in the cpp backend yet")
