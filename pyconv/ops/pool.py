"""Pooling custom ops (torch.ops.pyconv.max_pool2d, max_pool2d_values, avg_pool2d and their
backward ops), each with its fake-tensor function and, for the differentiable ones, its autograd
formula. Ops take normalized pairs (lists of 2 ints) and a concrete backend name;
pyconv.functional does the user-facing normalization. The ops re-check the shapes, so a direct
call cannot reach a kernel with inconsistent buffers."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from .. import _args, _config, backends
from .common import call, custom_op, new_output, register_autograd


def _plan(x: Tensor, kernel, stride, padding, dilation, ceil_mode, backend, op):
    shape = _args.pool2d_shape(x, kernel, stride, padding, dilation, ceil_mode, op)
    return shape, backends.load(backends.resolve(backend, x.device))


def _backward_plan(grad_output: Tensor, input_size, kernel, stride, padding, dilation, ceil_mode, backend):
    shape = _args.pool2d_shape_of_sizes(tuple(input_size), kernel, stride, padding, dilation, ceil_mode)
    want = (shape.N, shape.C, shape.P, shape.Q)
    if tuple(grad_output.shape) != want:
        raise _args.PyConvError(f"grad_output: expected size {want} for input size {tuple(input_size)}, "
                                f"got {tuple(grad_output.shape)}")
    _args.check_float_tensor(grad_output, "grad_output", (4,))
    return shape, backends.load(backends.resolve(backend, grad_output.device))


def _out_size(x_size, kernel, stride, padding, dilation, ceil_mode):
    s = _args.pool2d_shape_of_sizes(tuple(x_size), kernel, stride, padding, dilation, ceil_mode)
    return (s.N, s.C, s.P, s.Q)


def _new_indices(shape, like: Tensor) -> Tensor:
    idx = torch.empty(shape, dtype=torch.int64, device=like.device)
    if _config.DEBUG_FILL:
        idx.fill_(-1)
    return idx


# -------------------------------------------------------------------------------- max_pool2d ---

@custom_op("max_pool2d")
def max_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
               ceil_mode: bool, backend: str) -> Tuple[Tensor, Tensor]:
    """(output, indices): indices are torch's flat per-plane h*W+w of each window's maximum."""
    shape, mod = _plan(x, kernel_size, stride, padding, dilation, ceil_mode, backend, "max_pool2d")
    return run_max_pool2d(x, shape, mod, True)


def run_max_pool2d(x: Tensor, shape, backend, with_indices: bool):
    """The kernel step of max_pool2d ((output, indices)) and, with_indices False, of
    max_pool2d_values (output), for arguments already checked and planned (shape, Backend)."""
    out = (shape.N, shape.C, shape.P, shape.Q)
    y = new_output(out, x)
    idx = None if not with_indices and backend.max_pool_indices_optional else _new_indices(out, x)
    backend.max_pool2d_forward(x.contiguous(), y, idx, shape)
    return (y, idx) if with_indices else y


@max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, backend):
    out = _out_size(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty(out), x.new_empty(out, dtype=torch.int64)


@custom_op("max_pool2d_values")
def max_pool2d_values(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                      dilation: List[int], ceil_mode: bool, backend: str) -> Tensor:
    """Output only (inference): skips writing the indices where the backend can."""
    shape, mod = _plan(x, kernel_size, stride, padding, dilation, ceil_mode, backend, "max_pool2d")
    return run_max_pool2d(x, shape, mod, False)


@max_pool2d_values.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, backend):
    return x.new_empty(_out_size(x.shape, kernel_size, stride, padding, dilation, ceil_mode))


@custom_op("max_pool2d_backward")
def max_pool2d_backward(grad_output: Tensor, indices: Tensor, input_size: List[int], kernel_size: List[int],
                        stride: List[int], padding: List[int], dilation: List[int], ceil_mode: bool,
                        backend: str) -> Tensor:
    shape, mod = _backward_plan(grad_output, input_size, kernel_size, stride, padding, dilation, ceil_mode,
                                backend)
    if indices.dtype != torch.int64 or tuple(indices.shape) != tuple(grad_output.shape):
        raise _args.PyConvError(f"indices: expected an int64 tensor of size {tuple(grad_output.shape)}, "
                                f"got {indices.dtype} of size {tuple(indices.shape)}")
    gx = new_output(tuple(input_size), grad_output)
    mod.max_pool2d_backward(grad_output.contiguous(), indices.contiguous(), gx, shape)
    return gx


@max_pool2d_backward.register_fake
def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode, backend):
    return grad_output.new_empty(input_size)


def _max_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd allocates and zero-fills a gradient of the indices
    ctx.save_for_backward(output[1])
    ctx.conf = (list(x.shape), kernel_size, stride, padding, dilation, ceil_mode, backend)


def _max_backward(ctx, grad_output, grad_indices):
    (indices,) = ctx.saved_tensors
    if grad_output is None:
        return (None,) * 7
    gx = call("max_pool2d_backward", grad_output, indices, *ctx.conf)
    return gx, None, None, None, None, None, None


register_autograd("max_pool2d", max_pool2d, _max_backward, _max_setup_context)


# -------------------------------------------------------------------------------- avg_pool2d ---

@custom_op("avg_pool2d")
def avg_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
               count_include_pad: bool, divisor_override: int, backend: str) -> Tensor:
    """divisor_override 0 = none."""
    shape, mod = _plan(x, kernel_size, stride, padding, [1, 1], ceil_mode, backend, "avg_pool2d")
    return run_avg_pool2d(x, shape, mod, count_include_pad, divisor_override)


def run_avg_pool2d(x: Tensor, shape, backend, count_include_pad: bool, divisor_override: int) -> Tensor:
    """The kernel step of avg_pool2d, for arguments already checked and planned (shape, Backend)."""
    y = new_output((shape.N, shape.C, shape.P, shape.Q), x)
    backend.avg_pool2d_forward(x.contiguous(), y, shape, bool(count_include_pad), int(divisor_override))
    return y


@avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    return x.new_empty(_out_size(x.shape, kernel_size, stride, padding, [1, 1], ceil_mode))


@custom_op("avg_pool2d_backward")
def avg_pool2d_backward(grad_output: Tensor, input_size: List[int], kernel_size: List[int], stride: List[int],
                        padding: List[int], ceil_mode: bool, count_include_pad: bool, divisor_override: int,
                        backend: str) -> Tensor:
    shape, mod = _backward_plan(grad_output, input_size, kernel_size, stride, padding, [1, 1], ceil_mode, backend)
    gx = new_output(tuple(input_size), grad_output)
    mod.avg_pool2d_backward(grad_output.contiguous(), gx, shape, bool(count_include_pad), int(divisor_override))
    return gx


@avg_pool2d_backward.register_fake
def _(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      backend):
    return grad_output.new_empty(input_size)


def _avg_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend = inputs
    ctx.conf = (list(x.shape), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                backend)


def _avg_backward(ctx, grad_output):
    gx = call("avg_pool2d_backward", grad_output, *ctx.conf)
    return gx, None, None, None, None, None, None, None


register_autograd("avg_pool2d", avg_pool2d, _avg_backward, _avg_setup_context)
