"""Validation and normalization of every op's arguments, with torch's rules. Written once; every
backend receives the normalized result (the shapes of pyconv.problem) and never re-validates.

Errors are PyConvError (ValueError and RuntimeError) naming the argument, the value and what was
expected; a wrong Python type raises TypeError.
"""
from __future__ import annotations

import math
import operator
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from ._errors import PyConvError
from .problem import BatchNormShape, ConvShape, PoolShape  # noqa: F401  (the shapes this module produces)

FLOAT_DTYPES = (torch.float32, torch.float64)


class ConvParams(NamedTuple):
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]  # top, bottom, left, right
    dilation: Tuple[int, int]
    groups: int


def _fail(msg: str):
    raise PyConvError(msg)


def as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__} {value!r}") from None


def pair(value, name: str) -> Tuple[int, int]:
    """int or sequence of 1 or 2 ints -> (h, w), like torch's _pair."""
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1:
            v = as_int(value[0], name)
            return v, v
        if len(value) != 2:
            _fail(f"{name}={tuple(value)!r}: expected an int or a pair of ints, got {len(value)} values")
        return as_int(value[0], name), as_int(value[1], name)
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 1:  # numpy array of ints
        return pair(list(value), name)
    v = as_int(value, name)
    return v, v


def positive_pair(value, name: str) -> Tuple[int, int]:
    p = pair(value, name)
    if min(p) <= 0:
        _fail(f"{name}={value!r}: expected positive values (non-positive {name} is not supported)")
    return p


# ----------------------------------------------------------------------------------- tensors ---

def check_float_tensor(t, name: str, dims: Sequence[int] = ()):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or an array, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        _fail(f"{name}: dtype {t.dtype} is not supported; expected torch.float32 or torch.float64")
    if dims and t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        _fail(f"{name}: expected a {want} tensor, got {t.dim()}-D of size {tuple(t.shape)}")


def check_same(ref: torch.Tensor, ref_name: str, other: Optional[torch.Tensor], name: str):
    if other is None:
        return
    if other.dtype != ref.dtype:
        _fail(f"{name}: dtype {other.dtype} differs from {ref_name}'s {ref.dtype}; expected the same dtype")
    if other.device != ref.device:
        _fail(f"{name}: on device {other.device} but {ref_name} is on {ref.device}; expected the same device")


# ------------------------------------------------------------------------------- convolution ---

def conv2d_params(kernel_hw: Tuple[int, int], stride, padding, dilation, groups) -> ConvParams:
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    groups = as_int(groups, "groups")
    if groups <= 0:
        _fail(f"groups={groups}: expected a positive number of groups (non-positive groups is not supported)")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                _fail(f"padding='same' with stride={stride}: 'same' is not supported for strided convolutions")
            pads = []
            for d, k in zip(dilation, kernel_hw):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # torch puts the odd pixel at the end
            pads = tuple(pads)
        else:
            _fail(f"padding={padding!r}: expected an int, a pair, 'same' or 'valid'")
    else:
        ph, pw = pair(padding, "padding")
        if min(ph, pw) < 0:
            _fail(f"padding={padding!r}: expected non-negative values (negative padding is not supported)")
        pads = (ph, ph, pw, pw)
    return ConvParams(stride, pads, dilation, groups)


def _check_output_fits(sizes, op: str):
    """An output whose byte count overflows int64 cannot exist: say so here (torch's allocator would
    raise its own internal RuntimeError)."""
    n = 8
    for d in sizes:
        n *= d
    if n >= 2 ** 63:
        _fail(f"{op}: output of size {tuple(sizes)} has too many elements to allocate")


def _conv_out(size, pad0, pad1, dil, k, stride):
    return (size + pad0 + pad1 - dil * (k - 1) - 1) // stride + 1


def conv2d_shape(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], p: ConvParams) -> ConvShape:
    """Checks a batched conv2d (x 4-D) against torch's rules and returns its shape."""
    check_float_tensor(x, "input", (4,))
    check_float_tensor(w, "weight", (4,))
    check_same(x, "input", w, "weight")
    if b is not None:
        check_float_tensor(b, "bias")
        check_same(x, "input", b, "bias")
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    if C == 0:  # (torch returns a zero-channel output here, not the K channels of bias)
        _fail(f"input: a convolution over zero input channels is not supported, got input of size {tuple(x.shape)}")
    if x.numel() == 0 and N != 0:
        _fail(f"input: only zero batch inputs can be empty, got input of size {tuple(x.shape)}")
    G = p.groups
    if K < G:  # torch: at least one output channel per group
        _fail(f"weight: expected at least {G} output channel(s) (groups={G}), got weight of size {tuple(w.shape)}")
    if K % G:
        _fail(f"weight: {K} output channels (size {tuple(w.shape)}) are not divisible by groups={G}")
    if Cg * G != C:
        _fail(f"input: expected {Cg * G} channels (weight {tuple(w.shape)} x groups={G}), got {C} channels "
              f"in input of size {tuple(x.shape)}")
    if b is not None and tuple(b.shape) != (K,):
        _fail(f"bias: expected shape ({K},) for {K} output channels, got {tuple(b.shape)}")
    if R == 0 or S == 0:
        _fail(f"weight: kernel size {R}x{S} must be positive, weight of size {tuple(w.shape)}")
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = p.stride, p.padding, p.dilation
    Hp, Wp = H + pt + pb, W + pl + pr
    Rd, Sd = dh * (R - 1) + 1, dw * (S - 1) + 1
    if Hp < Rd or Wp < Sd:
        _fail(f"input: calculated padded input size per channel ({Hp} x {Wp}) is smaller than the dilated "
              f"kernel size ({Rd} x {Sd}); kernel size can't be greater than actual input size")
    P, Q = _conv_out(H, pt, pb, dh, R, sh), _conv_out(W, pl, pr, dw, S, sw)
    _check_output_fits((N, K, P, Q), "conv2d")
    return ConvShape(N, C, H, W, K, R, S, P, Q, G, sh, sw, pt, pl, dh, dw)


def conv2d_shape_of_sizes(x_size, w_size, p: ConvParams) -> ConvShape:
    """Output shape from sizes alone (fake tensors, workspace estimates); no dtype checks."""
    N, C, H, W = x_size
    K, _, R, S = w_size
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = p.stride, p.padding, p.dilation
    return ConvShape(N, C, H, W, K, R, S, _conv_out(H, pt, pb, dh, R, sh), _conv_out(W, pl, pr, dw, S, sw),
                     p.groups, sh, sw, pt, pl, dh, dw)


# ----------------------------------------------------------------------------------- pooling ---

def _pool_out(size, k, s, pad, dil, ceil_mode):
    span = size + 2 * pad - dil * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # torch: the last window must start inside the input or the left padding
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _windows_nonempty(size, out, k, s, pad, dil) -> bool:
    """Every window holds an in-range tap (a dilated window can step over a small input entirely;
    torch then reads out of bounds)."""
    if (out - 1) * s - pad >= size:
        return False
    o = 0
    while o < out and o * s - pad < 0:
        start = o * s - pad
        r = -(start // dil)  # first tap at or after 0: ceil(-start / dil)
        if r >= k or start + r * dil >= size:
            return False
        o += 1
    return True


def pool2d_params(kernel_size, stride, padding, dilation, op: str):
    """(kernel, stride, padding, dilation) pairs, checked like torch (stride None or [] = kernel)."""
    kh, kw = positive_pair(kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = positive_pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if min(ph, pw) < 0:
        _fail(f"padding={padding!r}: pad must be non-negative")
    dh, dw = positive_pair(dilation, "dilation")
    # torch checks the padding against the kernel size itself, not the dilated kernel
    if ph > kh // 2 or pw > kw // 2:
        _fail(f"padding={padding!r}: {op} pad should be at most half of kernel size, but got pad=({ph}, {pw}) "
              f"for kernel_size=({kh}, {kw})")
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw)


def pool2d_shape_of_sizes(size, kernel, stride, padding, dilation, ceil_mode: bool) -> PoolShape:
    """Output shape from sizes and normalized pairs alone (fake tensors, backward); no checks."""
    N, C, H, W = size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    P = _pool_out(H, kh, sh, ph, dh, bool(ceil_mode))
    Q = _pool_out(W, kw, sw, pw, dw, bool(ceil_mode))
    return PoolShape(N, C, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw)


def pool2d_shape(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool, op: str) -> PoolShape:
    """max_pool2d / avg_pool2d arguments (x 4-D, batched) -> PoolShape, with torch's checks."""
    check_float_tensor(x, "input", (4,))
    if min(x.shape[1:]) <= 0:
        _fail(f"input: expected a 3-D or 4-D tensor with non-zero sizes except an optional 0 batch size, "
              f"got size {tuple(x.shape)}")
    kernel, stride, padding, dilation = pool2d_params(kernel_size, stride, padding, dilation, op)
    s = pool2d_shape_of_sizes(tuple(x.shape), kernel, stride, padding, dilation, ceil_mode)
    if s.P < 1 or s.Q < 1:
        _fail(f"input: given input size ({s.C}x{s.H}x{s.W}), calculated output size ({s.C}x{s.P}x{s.Q}) is too "
              f"small for {op} with kernel_size={kernel}, stride={stride}, padding={padding}, dilation={dilation}")
    if not (_windows_nonempty(s.H, s.P, s.kernel_h, s.stride_h, s.pad_h, s.dil_h)
            and _windows_nonempty(s.W, s.Q, s.kernel_w, s.stride_w, s.pad_w, s.dil_w)):
        _fail(f"dilation={dilation}: with kernel_size={kernel} and padding={padding}, some {op} window of the "
              f"{s.H}x{s.W} input holds no input element; use a smaller dilation or padding")
    return s


def divisor(divisor_override) -> int:
    if divisor_override is None:
        return 0
    d = as_int(divisor_override, "divisor_override")
    if d == 0:
        _fail("divisor_override=0: divisor must be not zero")
    return d


# -------------------------------------------------------------------------------- batch norm ---

def batch_norm_shape(x, running_mean, running_var, weight, bias, training: bool, momentum, eps) -> BatchNormShape:
    check_float_tensor(x, "input")
    if x.dim() < 2:
        _fail(f"input: expected at least 2-D (N, C, ...) input, got {x.dim()}-D of size {tuple(x.shape)}")
    N, C = x.shape[0], x.shape[1]
    L = math.prod(x.shape[2:])
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"),
                    (bias, "bias")):
        if t is None:
            continue
        check_float_tensor(t, name)
        check_same(x, "input", t, name)
        if tuple(t.shape) != (C,):
            _fail(f"{name}: expected shape ({C},) for {C} channels, got {tuple(t.shape)}")
    if (running_mean is None) != (running_var is None):
        _fail("running_mean/running_var: must either both be None or neither be None")
    # torch returns an empty input unchanged even without running statistics
    if not training and (running_mean is None or running_var is None) and x.numel() > 0:
        _fail("running_mean/running_var: required when training=False")
    if training and N * L == 1:  # torch: an empty batch is allowed
        _fail(f"input: expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    if momentum is not None and not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        _fail(f"eps={eps!r}: expected a non-negative float")
    return BatchNormShape(N, C, L)
