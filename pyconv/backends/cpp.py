"""The C++ CPU backend: pyconv._C (csrc/cpu through csrc/bindings). Tensors reach the kernels as
zero-copy numpy views; the binding checks every buffer against the shape."""
from __future__ import annotations

import torch

from .. import _C
from ..autotune import winograd_tile

CONV_ALGOS = ("direct", "im2col", "winograd", "winograd_2x2", "winograd_4x4")


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def _np(t: torch.Tensor):
    return None if t is None else t.detach().numpy()


def _shape(shape):
    return _C.ConvShape(*shape)


def conv2d_forward(x, w, b, y, shape, algo, stats=None):
    """stats: optional (2, K) float64 tensor <- per-channel sum and sum of squares of y (direct:
    taken in the conv epilogue; im2col and winograd: one pass over y after the conv)."""
    if algo.startswith("winograd"):
        return _C.conv_winograd_forward(_shape(shape), winograd_tile(algo, shape), _np(x), _np(w), _np(b), _np(y),
                                        _np(stats))
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_forward")(_shape(shape), _np(x), _np(w), _np(b), _np(y), _np(stats))
    raise NotImplementedError(f"algo={algo!r} is not implemented in the cpp backend yet")


def conv2d_backward_input(gy, w, gx, shape, algo):
    if algo.startswith("winograd"):
        return _C.conv_winograd_backward_input(_shape(shape), winograd_tile(algo, shape), _np(gy), _np(w), _np(gx))
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_backward_input")(_shape(shape), _np(gy), _np(w), _np(gx))
    raise NotImplementedError(f"algo={algo!r} grad-input is not implemented in the cpp backend yet")


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    if algo.startswith("winograd"):
        return _C.conv_winograd_backward_weight(_shape(shape), winograd_tile(algo, shape), _np(x), _np(gy), _np(gw),
                                                _np(gb))
    if algo in CONV_ALGOS:
        return getattr(_C, f"conv_{algo}_backward_weight")(_shape(shape), _np(x), _np(gy), _np(gw), _np(gb))
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
                       momentum, eps, relu=False, stats=None):
    return _C.batch_norm_forward(_C.BatchNormShape(*shape), _np(x), _np(weight), _np(bias), _np(running_mean),
                                 _np(running_var), _np(y), _np(save_mean), _np(save_invstd), bool(training),
                                 float(momentum), float(eps), _np(stats), bool(relu))


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training, relu_output=None):
    return _C.batch_norm_backward(_C.BatchNormShape(*shape), _np(gy), _np(x), _np(weight), _np(save_mean),
                                  _np(save_invstd), _np(gx), _np(gw), _np(gb), bool(training), _np(relu_output))


def relu_forward(x):
    return _C.relu_forward(_np(x))


def relu_backward(gz, z, gx):
    return _C.relu_backward(_np(gz), _np(z), _np(gx))
