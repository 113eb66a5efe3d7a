"""Convolution custom ops (torch.ops.pyconv.conv2d, conv2d_backward): one opaque op per kernel
call, with its autograd formula (register_autograd) and fake-tensor function (register_fake), so
autograd and torch.compile see pyconv ops and never trace into the kernels.

Ops take normalized arguments (lists of ints, concrete algo and backend names); pyconv.functional
does the user-facing normalization. The ops still check shapes, so a direct call to
torch.ops.pyconv.* cannot reach a kernel with inconsistent buffers.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _args, autotune, backends
from ..problem import ACTIVATIONS, pass_algos
from .common import call, custom_op, new_output, register_autograd


def _params(stride, padding, dilation, groups) -> _args.ConvParams:
    return _args.ConvParams(tuple(stride), tuple(padding), tuple(dilation), int(groups))


def _conv_plan(x, weight, bias, stride, padding, dilation, groups, algo, backend):
    """(shape, (forward, grad-input, grad-weight algorithms), Backend): the plan's algorithm per pass."""
    shape = _args.conv2d_shape(x, weight, bias, _params(stride, padding, dilation, groups))
    backend = backends.resolve(backend, x.device)
    algo = autotune.resolve_conv_algo(algo, shape, backend, x.dtype)
    return shape, pass_algos(algo), backends.load(backend)


# ------------------------------------------------------------------------------------ conv2d ---

@custom_op("conv2d")
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int, algo: str, backend: str) -> Tensor:
    shape, (algo, _, _), mod = _conv_plan(x, weight, bias, stride, padding, dilation, groups, algo, backend)
    return run_conv2d(x, weight, bias, shape, algo, mod)


def run_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], shape, algo: str, backend,
               prepared=None) -> Tensor:
    """The kernel step of conv2d, for arguments already checked and planned (shape, concrete algo or
    plan (its forward part runs), Backend instance, and the weights' prepared form if any)."""
    algo = pass_algos(algo)[0]
    y = new_output((shape.N, shape.K, shape.P, shape.Q), x)
    backend.conv2d_forward(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(), y,
                           shape, algo, prepared=prepared)
    return y


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, algo, backend):
    s = _args.conv2d_shape_of_sizes(x.shape, weight.shape, _params(stride, padding, dilation, groups))
    return x.new_empty((s.N, s.K, s.P, s.Q))


@custom_op("conv2d_backward")
def conv2d_backward(grad_output: Tensor, x: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                    dilation: List[int], groups: int, algo: str, backend: str,
                    output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); an entry not asked for in output_mask is empty."""
    shape, algos, mod = _conv_plan(x, weight, None, stride, padding, dilation, groups, algo, backend)
    if tuple(grad_output.shape) != (shape.N, shape.K, shape.P, shape.Q):
        raise _args.PyConvError(f"grad_output: expected size {(shape.N, shape.K, shape.P, shape.Q)}, "
                                f"got {tuple(grad_output.shape)}")
    return run_conv2d_backward(grad_output, x, weight, output_mask, shape, algos, mod)


def run_conv2d_backward(grad_output, x, weight, output_mask, shape, algos, backend):
    """The kernel step of conv2d_backward, for arguments already checked and planned (shape, the
    (forward, grad-input, grad-weight) algorithms, Backend instance)."""
    _, gi_algo, gw_algo = algos
    gy = grad_output.contiguous()
    x, weight = x.contiguous(), weight.contiguous()
    empty = x.new_empty(0)
    gx = new_output(x.shape, x) if output_mask[0] else empty
    gw = new_output(weight.shape, weight) if output_mask[1] else empty.clone()
    gb = new_output((shape.K,), weight) if output_mask[2] else empty.clone()
    if output_mask[0]:
        backend.conv2d_backward_input(gy, weight, gx, shape, gi_algo)
    if output_mask[1] or output_mask[2]:
        backend.conv2d_backward_weight(x, gy, gw if output_mask[1] else None, gb if output_mask[2] else None,
                                       shape, gw_algo)
    return gx, gw, gb


@conv2d_backward.register_fake
def _(grad_output, x, weight, stride, padding, dilation, groups, algo, backend, output_mask):
    return (x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0),
            weight.new_empty((weight.shape[0],)) if output_mask[2] else weight.new_empty(0))


def _conv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, algo, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation, groups, algo, backend)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad_output):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if not any(mask):
        return None, None, None, None, None, None, None, None, None
    plan = getattr(ctx, "plan", None)  # the forward's (shape, algorithms, Backend), on the eager path
    planned = None if plan is None else (lambda: run_conv2d_backward(grad_output, x, weight, mask, *plan))
    gx, gw, gb = call("conv2d_backward", grad_output, x, weight, *ctx.conf, mask, planned=planned)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None)


register_autograd("conv2d", conv2d, _conv2d_backward, _conv2d_setup_context)


# -------------------------------------------------------------------------- conv2d_activation ---

@custom_op("conv2d_activation")
def conv2d_activation(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
                      stride: List[int], padding: List[int], dilation: List[int], groups: int, activation: str,
                      algo: str, backend: str) -> Tensor:
    """act(conv2d(x, weight) + bias [+ residual]): the inference epilogue of a fused conv -> BN (folded
    into weight and bias) -> activation chain, optionally with a residual input. No autograd formula:
    the layers use it only where no gradient is needed."""
    shape, (algo, _, _), mod = _conv_plan(x, weight, bias, stride, padding, dilation, groups, algo, backend)
    check_residual(residual, shape, x)
    return run_conv2d_activation(x, weight, bias, residual, shape, activation, algo, mod)


def check_residual(residual: Optional[Tensor], shape, x: Tensor) -> None:
    if residual is None:
        return
    out = (shape.N, shape.K, shape.P, shape.Q)
    if tuple(residual.shape) != out:
        raise _args.PyConvError(f"residual: expected size {out} (the convolution's output), got "
                                f"{tuple(residual.shape)}")
    _args.check_same(x, "input", residual, "residual")


def run_conv2d_activation(x, weight, bias, residual, shape, activation: str, algo: str, backend,
                          prepared=None) -> Tensor:
    """The kernel step of conv2d_activation, for arguments already checked and planned (a plan's
    forward part runs)."""
    algo = pass_algos(algo)[0]
    if activation not in ACTIVATIONS:
        raise _args.PyConvError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
    y = new_output((shape.N, shape.K, shape.P, shape.Q), x)
    backend.conv2d_activation_forward(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
                                      None if residual is None else residual.contiguous(), y, shape, algo, activation,
                                      prepared=prepared)
    return y


@conv2d_activation.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, activation, algo, backend):
    s = _args.conv2d_shape_of_sizes(x.shape, weight.shape, _params(stride, padding, dilation, groups))
    return x.new_empty((s.N, s.K, s.P, s.Q))
