"""Fused conv-BN-ReLU custom ops (torch.ops.pyconv.conv_bn_relu, conv_bn_relu_backward):
z = act(batch_norm(conv2d(x, w, b))) as one opaque op, forward and backward; act is "relu",
"relu6" (MobileNetV2; backends with Backend.clipped_bn_relu) or "none" (a block's last conv, a
downsample branch).

Training: the conv kernel writes y and, in the same call, its per-channel sum and sum of squares
(float64; direct and im2col take them in their epilogues, while each output row or GEMM tile is in
L1; Winograd in a pass over y right after its output transform); the batch-norm kernel takes those
statistics and writes normalize + ReLU in one sweep. Running statistics are returned as new outputs
(torch.library does not allow an autograd formula on a mutating op) and pyconv.functional copies
them into the buffers.
Backward: one batch-norm backward kernel reads the incoming gradient of z, masks it by z > 0 (by
0 < z < 6 for ReLU6: the activation's backward, recomputed from z: nothing stored, no extra buffer) inside its reductions and its
grad-input sweep; then the conv's grad-input and grad-weight. Saved: x, y and z, as torch's unfused
Conv2d + BatchNorm2d + ReLU (z is the next layer's input, which it keeps anyway; y is needed whole:
the BN backward uses every xhat, masked or not). What the fusion saves is transient memory: no BN
output before the ReLU, no separate gradient of it (benchmarks/bench_conv_bn_relu.py measures it).
Eval: BN is folded into the conv's weights and bias (w' = w * gamma * invstd, b' = (b - mean) *
gamma * invstd + beta, in float64: prepared.fold_batch_norm), one conv with the ReLU in its epilogue; the backward recomputes the conv output
only when the BN parameters need gradients.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _args
from ..prepared import fold_batch_norm
from ..problem import ACTIVATIONS, BatchNormShape
from .common import call, custom_op, new_output, register_autograd
from .conv import _conv_plan, _params, check_residual


@custom_op("conv_bn_relu")
def conv_bn_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor], bn_weight: Tensor, bn_bias: Tensor,
                 running_mean: Tensor, running_var: Tensor, stride: List[int], padding: List[int],
                 dilation: List[int], groups: int, training: bool, momentum: float, eps: float, activation: str,
                 algo: str, backend: str,
                 residual: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(z, y, save_mean, save_invstd, new_running_mean, new_running_var); y (the conv output) is
    empty in eval mode. residual: added after the batch norm, before the activation (a residual
    block's tail; backends with Backend.residual_bn)."""
    shape, (algo, _, _), mod = _conv_plan(x, weight, bias, stride, padding, dilation, groups, algo, backend)
    r = check_conv_bn_relu(x, shape, mod, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                           activation, residual)
    return run_conv_bn_relu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                            activation, r, shape, algo, mod)


def check_conv_bn_relu(x, shape, mod, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                       activation, residual):
    """The checks of conv_bn_relu beyond the convolution's (its plan): batch-norm arguments, the
    activation and the residual against the backend's capabilities. Returns the residual, contiguous."""
    _bn_clip(activation, mod)
    r = _residual_of(residual, shape, x, mod)
    y_probe = x.new_empty((shape.N, shape.K, shape.P, shape.Q)) if shape.N else x.new_empty((1, shape.K, 1, 1))
    _args.batch_norm_shape(y_probe, running_mean, running_var, bn_weight, bn_bias, training and shape.N > 0,
                           momentum, eps)
    return r


def run_conv_bn_relu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                     activation, residual, shape, algo, mod):
    """The kernel step of conv_bn_relu, for arguments already checked (check_conv_bn_relu) and
    planned (shape, the forward's concrete algorithm, Backend instance)."""
    clip = _bn_clip(activation, mod)
    out = (shape.N, shape.K, shape.P, shape.Q)
    x = x.contiguous()
    rm = running_mean.clone(memory_format=torch.contiguous_format)
    rv = running_var.clone(memory_format=torch.contiguous_format)
    z = new_output(out, x)
    save_mean, save_invstd = new_output((shape.K,), x), new_output((shape.K,), x)
    if training:
        y = new_output(out, x)
        stats = torch.empty((2, shape.K), dtype=torch.float64, device=x.device)
        mod.conv2d_forward(x, weight.contiguous(), None if bias is None else bias.contiguous(), y, shape, algo,
                           stats=stats)
        mod.batch_norm_forward(y, bn_weight.contiguous(), bn_bias.contiguous(), rm, rv, z, save_mean, save_invstd,
                               _bn_shape_of(shape), True, float(momentum), float(eps), relu=activation != "none",
                               stats=stats, **clip, **({} if residual is None else {"residual": residual}))
    else:
        y = x.new_empty(0)
        w, b = fold_batch_norm(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
        mod.conv2d_activation_forward(x, w, b, residual, z, shape, algo, activation)
        save_mean.copy_(running_mean)
        save_invstd.copy_(torch.rsqrt(running_var + eps))
    return z, y, save_mean, save_invstd, rm, rv


def _residual_of(residual, shape, x, mod):
    """The residual input, contiguous, after the backend's capability and conv's residual checks
    (the output's size, the input's dtype and device); None: none."""
    if residual is None:
        return None
    if not mod.residual_bn:
        raise _args.PyConvError(f"residual: backend={mod.name!r} has no fused residual batch norm "
                                f"(Backend.residual_bn)")
    check_residual(residual, shape, x)
    return residual.contiguous()


def _bn_clip(activation: str, mod) -> dict:
    """The batch-norm kernels' extra argument for activation (relu_max=6 for ReLU6)."""
    if activation not in ACTIVATIONS:
        raise _args.PyConvError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
    if activation != "relu6":
        return {}
    if not mod.clipped_bn_relu:
        raise _args.PyConvError(f"activation='relu6': backend={mod.name!r} has no fused ReLU6 batch norm "
                                f"(Backend.clipped_bn_relu)")
    return {"relu_max": 6.0}


@conv_bn_relu.register_fake
def _(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding, dilation, groups, training,
      momentum, eps, activation, algo, backend, residual=None):
    s = _args.conv2d_shape_of_sizes(x.shape, weight.shape, _params(stride, padding, dilation, groups))
    out = (s.N, s.K, s.P, s.Q)
    return (x.new_empty(out), x.new_empty(out) if training else x.new_empty(0), x.new_empty((s.K,)),
            x.new_empty((s.K,)), x.new_empty(running_mean.shape), x.new_empty(running_var.shape))


@custom_op("conv_bn_relu_backward")
def conv_bn_relu_backward(grad_z: Tensor, z: Tensor, y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          bn_weight: Tensor, save_mean: Tensor, save_invstd: Tensor, stride: List[int],
                          padding: List[int], dilation: List[int], groups: int, training: bool, activation: str,
                          algo: str, backend: str,
                          output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias, grad_residual); entries
    not in output_mask are empty."""
    shape, algos, mod = _conv_plan(x, weight, bias, stride, padding, dilation, groups, algo, backend)
    out = (shape.N, shape.K, shape.P, shape.Q)
    if tuple(grad_z.shape) != out or tuple(z.shape) != out:
        raise _args.PyConvError(f"grad_output: expected size {out}, got {tuple(grad_z.shape)}")
    return run_conv_bn_relu_backward(grad_z, z, y, x, weight, bias, bn_weight, save_mean, save_invstd, training,
                                     activation, output_mask, shape, algos, mod)


def run_conv_bn_relu_backward(grad_z, z, y, x, weight, bias, bn_weight, save_mean, save_invstd, training, activation,
                              output_mask, shape, algos, mod):
    """The kernel step of conv_bn_relu_backward, for arguments already checked and planned (shape,
    the (forward, grad-input, grad-weight) algorithms, Backend instance)."""
    fwd_algo, gi_algo, gw_algo = algos
    out = (shape.N, shape.K, shape.P, shape.Q)
    clip = _bn_clip(activation, mod)
    x, weight, z = x.contiguous(), weight.contiguous(), z.contiguous()
    if not training and (output_mask[3] or output_mask[4]):
        y = new_output(out, x)  # eval: the unfolded conv output, recomputed for the BN gradients
        mod.conv2d_forward(x, weight, None if bias is None else bias.contiguous(), y, shape, fwd_algo)
    empty = x.new_empty(0)
    gy = new_output(out, x)
    g_bnw = new_output((shape.K,), x) if output_mask[3] else empty.clone()
    g_bnb = new_output((shape.K,), x) if output_mask[4] else empty.clone()
    g_res = new_output(out, x) if output_mask[5] else empty.clone()
    y_for_bn = y.contiguous() if y.numel() else z  # eval without BN grads: the kernel ignores x
    mod.batch_norm_backward(grad_z.contiguous(), y_for_bn, bn_weight.contiguous(), save_mean.contiguous(),
                            save_invstd.contiguous(), gy, g_bnw if output_mask[3] else None,
                            g_bnb if output_mask[4] else None, _bn_shape_of(shape), bool(training),
                            relu_output=z if activation != "none" else None, **clip,
                            **({"grad_residual": g_res} if output_mask[5] else {}))
    gx = new_output(x.shape, x) if output_mask[0] else empty.clone()
    gw = new_output(weight.shape, x) if output_mask[1] else empty.clone()
    gb = new_output((shape.K,), x) if output_mask[2] else empty.clone()
    if output_mask[0]:
        mod.conv2d_backward_input(gy, weight, gx, shape, gi_algo)
    if output_mask[1] or output_mask[2]:
        mod.conv2d_backward_weight(x, gy, gw if output_mask[1] else None, gb if output_mask[2] else None, shape,
                                   gw_algo)
    return gx, gw, gb, g_bnw, g_bnb, g_res


@conv_bn_relu_backward.register_fake
def _(grad_z, z, y, x, weight, bias, bn_weight, save_mean, save_invstd, stride, padding, dilation, groups,
      training, activation, algo, backend, output_mask):
    K = weight.shape[0]
    shapes = (x.shape, weight.shape, (K,), (K,), (K,), z.shape)
    return tuple(x.new_empty(s) if m else x.new_empty(0) for s, m in zip(shapes, output_mask))


def _setup_context(ctx, inputs, output):
    (x, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding, dilation, groups, training,
     momentum, eps, activation, algo, backend, residual) = inputs
    z, y, save_mean, save_invstd, new_mean, new_var = output
    ctx.mark_non_differentiable(y, save_mean, save_invstd, new_mean, new_var)
    ctx.set_materialize_grads(False)  # else autograd allocates and zero-fills a gradient of y
    # z is read back only for the ReLU mask (and as eval's stand-in for y): without a ReLU, training
    # saves y in its place, so a residual tail keeps no extra activation alive (as torch's in-place add)
    ctx.save_for_backward(z if activation != "none" or not training else y, y, x, weight, bias, bn_weight, save_mean,
                          save_invstd)
    ctx.conf = (stride, padding, dilation, groups, training, activation, algo, backend)
    ctx.residual = residual is not None  # (a call may leave the defaulted residual out of the inputs)


def _backward(ctx, grad_z, *unused):
    z, y, x, weight, bias, bn_weight, save_mean, save_invstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], bias is not None and need[2], need[3], need[4], ctx.residual and need[17]]
    grads = [None] * 18
    if grad_z is not None and any(mask):
        plan = getattr(ctx, "plan", None)  # the forward's (shape, algorithms, Backend), on the eager path
        training, activation = ctx.conf[4:6]
        planned = None if plan is None else (lambda: run_conv_bn_relu_backward(
            grad_z, z, y, x, weight, bias, bn_weight, save_mean, save_invstd, training, activation, mask, *plan))
        out = call("conv_bn_relu_backward", grad_z, z, y, x, weight, bias, bn_weight, save_mean, save_invstd,
                   *ctx.conf, mask, planned=planned)
        for i, g, m in zip((0, 1, 2, 3, 4, 17), out, mask):  # (17: the residual)
            grads[i] = g if m else None
    return tuple(grads)


register_autograd("conv_bn_relu", conv_bn_relu, _backward, _setup_context)


# ---- a layer's training step, bound once (functional.bound_conv_bn_relu) --------------------------

class TrainStep:
    """conv -> batch norm (-> activation) in training for one planned layer: the checked plan
    (shape, (forward, grad-input, grad-weight) algorithms) and the backend's kernels bound to it
    (Backend.bind_conv_bn_train, which also makes their outputs). run() is the same computation as
    conv_bn_relu with training=True, as one autograd node, without re-planning, the dispatcher or the
    custom op's layers (on a small network's layers those cost more than the kernels). The running
    statistics are updated in place (their version counters bumped, as torch's own in-place update
    does)."""
    __slots__ = ("out", "relu", "forward_kernels", "backward_kernels")

    def __init__(self, shape, algos, backend, activation: str):
        self.out, self.relu = (shape.N, shape.K, shape.P, shape.Q), activation != "none"
        self.forward_kernels, self.backward_kernels = backend.bind_conv_bn_train(
            shape, algos, _bn_shape_of(shape), activation)

    def forward(self, x, w, b, bnw, bnb, rm, rv, momentum, eps, residual):
        """(z, y, saved: the batch's mean and invstd as rows of one (2, K) tensor, mask: what the
        backward needs of the activation, the backend's form) for a contiguous x and weights,
        residual already checked."""
        z, y, saved, mask = self.forward_kernels(x, w, b, bnw, bnb, rm, rv, momentum, eps, residual)
        _increment_version((rm, rv))
        return z, y, saved, mask

    def run(self, x, w, b, bnw, bnb, rm, rv, momentum, eps, residual, autograd: bool):
        if not autograd:
            return self.forward(x, w, b, bnw, bnb, rm, rv, momentum, eps, residual)[0]
        return _TrainStepFn.apply(self, x, w, b, bnw, bnb, residual, rm, rv, momentum, eps)


def _bn_shape_of(shape) -> BatchNormShape:
    return BatchNormShape(shape.N, shape.K, shape.P * shape.Q)


try:
    _increment_version = torch._C._increment_version
except AttributeError:  # a torch without it: an in-place no-op op bumps the counters
    def _increment_version(tensors):
        with torch.no_grad():
            for t in tensors:
                t.add_(0)


class _TrainStepFn(torch.autograd.Function):
    """TrainStep's autograd node (eager only: the dispatcher path is the conv_bn_relu op's)."""

    @staticmethod
    def forward(ctx, step, x, w, b, bnw, bnb, residual, rm, rv, momentum, eps):
        z, y, saved, mask = step.forward(x, w, b, bnw, bnb, rm, rv, momentum, eps, residual)
        ctx.set_materialize_grads(False)
        # the activation's mask (z, or the backend's bits): a residual tail keeps no extra activation alive
        ctx.save_for_backward(x, w, bnw, y, saved, mask)
        ctx.step, ctx.has_bias, ctx.has_residual = step, b is not None, residual is not None
        return z

    @staticmethod
    def backward(ctx, gz):
        need = ctx.needs_input_grad  # (step, x, w, b, bn_weight, bn_bias, residual, ...)
        if gz is None or not any(need[1:7]):
            return (None,) * 11
        x, w, bnw, y, saved, mask = ctx.saved_tensors
        gx, gw, gb, g_bnw, g_bnb, g_res = ctx.step.backward_kernels(
            gz.contiguous(), mask, y, x, w, bnw, saved,
            (need[1], need[2], ctx.has_bias and need[3], need[4], need[5], ctx.has_residual and need[6]))
        return None, gx, gw, gb, g_bnw, g_bnb, g_res, None, None, None, None
