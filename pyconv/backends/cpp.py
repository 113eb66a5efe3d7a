"""The C++ CPU backend: pyconv._C (csrc/cpu through csrc/bindings). Tensors reach the kernels as
zero-copy numpy views; the binding checks every buffer against the shape."""
from __future__ import annotations

import torch

from .. import _C

CONV_ALGOS = ("direct",)


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def _np(t: torch.Tensor):
    return None if t is None else t.detach().numpy()


def _shape(shape):
    return _C.ConvShape(*shape)


def conv2d_forward(x, w, b, y, shape, algo):
    if algo == "direct":
        return _C.conv_direct_forward(_shape(shape), _np(x), _np(w), _np(b), _np(y))
    raise NotImplementedError(f"algo={algo!r} is not implemented in the cpp backend yet")


def conv2d_backward_input(gy, w, gx, shape, algo):
    if algo == "direct":
        return _C.conv_direct_backward_input(_shape(shape), _np(gy), _np(w), _np(gx))
    raise NotImplementedError(f"algo={algo!r} grad-input is not implemented in the cpp backend yet")


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    if algo == "direct":
        return _C.conv_direct_backward_weight(_shape(shape), _np(x), _np(gy), _np(gw), _np(gb))
    raise NotImplementedError(f"algo={algo!r} grad-weight is not implemented in the cpp backend yet")


# ------------------------------------------------------------------- pooling and batch norm ---

MAX_POOL_INDICES_OPTIONAL = True  # max_pool2d_forward accepts indices=None (values only)


def _pool(shape):
    return _C.PoolShape(*shape)


def max_pool2d_forward(x, y, indices, shape):
    return _C.max_pool2d_forward(_pool(shape), _np(x), _np(y), _np(indices))


def max_pool2d_backward(gy, indices, gx, shape):
    return _C.max_pool2d_backward(_pool(shape), _np(gy), _np(indices), _np(gx))


def avg_pool2d_forward(x, y, shape, count_include_pad, divisor_override):
    return _C.avg_pool2d_forward(_pool(shape), _np(x), _np(y), bool(count_include_pad), int(divisor_override))


def avg_pool2d_backward(gy, gx, shape, count_include_pad, divisor_override):
    return _C.avg_pool2d_backward(_pool(shape), _np(gy), _np(gx), bool(count_include_pad), int(divisor_override))


def batch_norm_forward(x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape, training,
                       momentum, eps):
    return _C.batch_norm_forward(_C.BatchNormShape(*shape), _np(x), _np(weight), _np(bias), _np(running_mean),
                                 _np(running_var), _np(y), _np(save_mean), _np(save_invstd), bool(training),
                                 float(momentum), float(eps))


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training):
    return _C.batch_norm_backward(_C.BatchNormShape(*shape), _np(gy), _np(x), _np(weight), _np(save_mean),
                                  _np(save_invstd), _np(gx), _np(gw), _np(gb), bool(training))
