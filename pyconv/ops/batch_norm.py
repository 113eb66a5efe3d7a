"""Batch-norm custom ops (torch.ops.pyconv.batch_norm, batch_norm_backward).

torch.library refuses an autograd formula on an op that mutates its inputs, so the forward op is
functional: it returns (output, save_mean, save_invstd, new_running_mean, new_running_var), the
last two being the updated running statistics (empty when not given), and the caller copies them
into its buffers (pyconv.functional.batch_norm does). The backward op returns (grad_input,
grad_weight, grad_bias), an entry not asked for in output_mask being empty."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _args, backends
from ..problem import BatchNormShape
from .common import call, custom_op, new_output, register_autograd


def _shape(x: Tensor) -> BatchNormShape:
    return BatchNormShape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


@custom_op("batch_norm")
def batch_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
               running_var: Optional[Tensor], training: bool, momentum: float, eps: float,
               backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    shape = _args.batch_norm_shape(x, running_mean, running_var, weight, bias, training, momentum, eps)
    mod = backends.load(backends.resolve(backend, x.device))
    y = new_output(x.shape, x)
    save_mean, save_invstd = new_output((shape.C,), x), new_output((shape.C,), x)
    # The kernel updates running stats in place: give it copies, returned as new outputs.
    rm = x.new_empty(0) if running_mean is None else running_mean.clone(memory_format=torch.contiguous_format)
    rv = x.new_empty(0) if running_var is None else running_var.clone(memory_format=torch.contiguous_format)
    if not training and (running_mean is None or running_var is None):  # empty input (_args checked): no work
        return y, save_mean.zero_(), save_invstd.zero_(), rm, rv
    mod.batch_norm_forward(x.contiguous(), None if weight is None else weight.contiguous(),
                           None if bias is None else bias.contiguous(), None if running_mean is None else rm,
                           None if running_var is None else rv, y, save_mean, save_invstd, shape,
                           bool(training), float(momentum), float(eps))
    return y, save_mean, save_invstd, rm, rv


@batch_norm.register_fake
def _(x, weight, bias, running_mean, running_var, training, momentum, eps, backend):
    C = x.shape[1]
    stat = [x.new_empty(0) if t is None else x.new_empty(t.shape) for t in (running_mean, running_var)]
    return x.new_empty(x.shape), x.new_empty((C,)), x.new_empty((C,)), stat[0], stat[1]


@custom_op("batch_norm_backward")
def batch_norm_backward(grad_output: Tensor, x: Tensor, weight: Optional[Tensor], save_mean: Tensor,
                        save_invstd: Tensor, training: bool, backend: str,
                        output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    _args.check_float_tensor(x, "input")
    if x.dim() < 2:
        raise _args.PyConvError(f"input: expected at least 2-D input, got size {tuple(x.shape)}")
    C = x.shape[1]
    for t, name in ((grad_output, "grad_output"), (weight, "weight"), (save_mean, "save_mean"),
                    (save_invstd, "save_invstd")):
        if t is not None:
            _args.check_float_tensor(t, name)
            _args.check_same(x, "input", t, name)
    if tuple(grad_output.shape) != tuple(x.shape):
        raise _args.PyConvError(f"grad_output: expected size {tuple(x.shape)}, got {tuple(grad_output.shape)}")
    for t, name in ((weight, "weight"), (save_mean, "save_mean"), (save_invstd, "save_invstd")):
        if t is not None and tuple(t.shape) != (C,):
            raise _args.PyConvError(f"{name}: expected shape ({C},), got {tuple(t.shape)}")
    mod = backends.load(backends.resolve(backend, x.device))
    shape = _shape(x)
    empty = x.new_empty(0)
    gx = new_output(x.shape, x) if output_mask[0] else empty
    gw = new_output((C,), x) if output_mask[1] else empty.clone()
    gb = new_output((C,), x) if output_mask[2] else empty.clone()
    mod.batch_norm_backward(grad_output.contiguous(), x.contiguous(),
                            None if weight is None else weight.contiguous(), save_mean.contiguous(),
                            save_invstd.contiguous(), gx if output_mask[0] else None,
                            gw if output_mask[1] else None, gb if output_mask[2] else None, shape, bool(training))
    return gx, gw, gb


@batch_norm_backward.register_fake
def _(grad_output, x, weight, save_mean, save_invstd, training, backend, output_mask):
    C = x.shape[1]
    return (x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
            x.new_empty((C,)) if output_mask[1] else x.new_empty(0),
            x.new_empty((C,)) if output_mask[2] else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, training, momentum, eps, backend = inputs
    y, save_mean, save_invstd, new_mean, new_var = output
    ctx.mark_non_differentiable(save_mean, save_invstd, new_mean, new_var)
    ctx.set_materialize_grads(False)  # the statistics' gradients would be zero-filled tensors
    ctx.save_for_backward(x, weight, save_mean, save_invstd)
    ctx.conf = (training, backend)
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward(ctx, grad_output, *grad_stats):
    x, weight, save_mean, save_invstd = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.has_weight and ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    if grad_output is None or not any(mask):
        return (None,) * 9
    gx, gw, gb = call("batch_norm_backward", grad_output, x, weight, save_mean, save_invstd, *ctx.conf, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None) + (None,) * 6


register_autograd("batch_norm", batch_norm, _backward, _setup_context)
