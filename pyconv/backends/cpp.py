"""The C++ CPU backend: pyconv._C (csrc/cpu through csrc/bindings). Tensors reach the kernels as
zero-copy numpy views; the binding checks every buffer against the shape."""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import _C
from ..memory import new_output_array
from ..problem import ACTIVATIONS, CONV_ALGOS, WINOGRAD_ALGOS, winograd_tile
from .base import Backend, conv_bn_train_grad_sizes


def _np(t: torch.Tensor):
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()  # detach costs ~0.4 us a tensor


def _forward_kernel(algo, shape, prepared):
    """(the forward kernel of algo, its leading arguments): the shape, and for Winograd the tile m."""
    s = _C.ConvShape(*shape)
    if algo in WINOGRAD_ALGOS:
        return _C.conv_winograd_forward, (s, winograd_tile(algo, shape, prepared is not None))
    return getattr(_C, f"conv_{algo}_forward"), (s,)


def _backward_kernel(wrt, algo, shape, s=None):
    """(the grad-input (wrt "input") or grad-weight ("weight") kernel of algo, its leading arguments)."""
    s = _C.ConvShape(*shape) if s is None else s
    if algo in WINOGRAD_ALGOS:
        return getattr(_C, f"conv_winograd_backward_{wrt}"), (s, winograd_tile(algo, shape))
    return getattr(_C, f"conv_{algo}_backward_{wrt}"), (s,)


def _forward(x, w, b, y, shape, algo, stats, prepared, residual, act: int):
    """The forward kernel of algo, epilogue (residual, act) included."""
    kernel, lead = _forward_kernel(algo, shape, prepared)
    return kernel(*lead, _np(x), _np(w), _np(b), _np(y), _np(stats), _np(prepared), _np(residual), act)


_BLOCKED_MIN_CHANNELS = {dt: _C.conv_direct_blocked_min_channels(str(dt).replace("torch.", ""))
                         for dt in (torch.float32, torch.float64)}


def _pool(shape):
    return _C.PoolShape(*shape)


class CppBackend(Backend):
    name = "cpp"
    device = "cpu"
    conv_algos = CONV_ALGOS
    max_pool_indices_optional = True
    clipped_bn_relu = True
    residual_bn = True

    def is_available(self) -> bool:
        return True

    def set_num_threads(self, n: int) -> None:
        _C.set_num_threads(n)

    def blocked_direct(self, shape, dtype) -> bool:
        """csrc/cpu/conv_blocked.cpp takes the shape (exactly where direct has prepared panels): at
        least its minimum of output channels per group (any input channels: a narrower group is one
        block of all its channels). Plain Python (the minimum read once), so 'auto' stays traceable by
        torch.compile."""
        need = _BLOCKED_MIN_CHANNELS.get(dtype)
        return need is not None and shape.K // shape.G >= need

    # ---- convolution: the Winograd entry points take the tile m, the others are named by algo
    def conv2d_forward(self, x, w, b, y, shape, algo, stats=None, prepared=None):
        """stats: direct and im2col take them in their epilogues, winograd in a pass over y."""
        return _forward(x, w, b, y, shape, algo, stats, prepared, None, 0)

    def conv2d_activation_forward(self, x, w, b, residual, y, shape, algo, activation, prepared=None):
        """Every algorithm applies the activation and residual in its forward kernel's epilogue."""
        return _forward(x, w, b, y, shape, algo, None, prepared, residual, ACTIVATIONS.index(activation))

    def bind_conv2d_activation(self, w, b, shape, algo, activation, prepared=None):
        """The kernel and its fixed operands (shape, numpy views of the weight, bias and prepared
        form, the Winograd tile, the activation index) resolved once: a call converts x, the
        residual and y only (about 10 us less per call of a converted model's layer)."""
        kernel, lead = _forward_kernel(algo, shape, prepared)
        act = ACTIVATIONS.index(activation)
        w_np, b_np, u_np = _np(w.contiguous()), _np(None if b is None else b.contiguous()), _np(prepared)

        def run(x, residual, y):
            kernel(*lead, _np(x), w_np, b_np, _np(y), None, u_np, _np(residual), act)
        return run

    def bind_conv_bn_train(self, shape, algos, bn_shape, activation):
        """Backend.bind_conv_bn_train with the kernels, their shapes and fixed arguments resolved once
        (about 15 us less per layer and training step than through the table), and the outputs made
        with their numpy views (memory.new_output_array), which go straight to the kernels."""
        fwd_algo, gi_algo, gw_algo = algos
        s, bs = _C.ConvShape(*shape), _C.BatchNormShape(*bn_shape)
        fk, flead = _forward_kernel(fwd_algo, shape, None)
        gik, gilead = _backward_kernel("input", gi_algo, shape, s)
        gwk, gwlead = _backward_kernel("weight", gw_algo, shape, s)
        relu = activation != "none"
        relu_max = 6.0 if activation == "relu6" else math.inf
        bn_forward, bn_backward = _C.batch_norm_forward, _C.batch_norm_backward
        out, K, grad_sizes = (shape.N, shape.K, shape.P, shape.Q), shape.K, conv_bn_train_grad_sizes(shape)
        # the activation's mask for the backward as bits (1/32 of z's bytes in each of the batch-norm
        # backward's two sweeps), not z
        mask_words = _C.batch_norm_relu_mask_words(bs) if relu else 0

        def forward(x, w, b, bnw, bnb, rm, rv, momentum, eps, residual):
            dt = x.dtype
            (z, z_np), (y, y_np), (saved, sv_np) = (new_output_array(out, dt), new_output_array(out, dt),
                                                    new_output_array((2, K), dt))
            mask = np.empty(mask_words, np.uint64) if relu else None
            stats = np.empty((2, K))  # the conv epilogue's sums, for the batch norm only
            fk(*flead, _np(x), _np(w), _np(b), y_np, stats, None, None, 0)
            bn_forward(bs, y_np, _np(bnw), _np(bnb), rm.numpy(), rv.numpy(), z_np, sv_np[0], sv_np[1], True, momentum,
                       eps, stats, relu, relu_max, _np(residual), mask)
            return z, y, saved, None if mask is None else torch.from_numpy(mask)

        def backward(gz, mask, y, x, w, bnw, saved, wanted):
            dt = x.dtype
            gy, gy_np = new_output_array(out, dt)
            grads = [new_output_array(size, dt) if want else (None, None) for size, want in zip(grad_sizes, wanted)]
            (gx, gx_np), (gw, gw_np), (gb, gb_np), (_, g_bnw), (_, g_bnb), (_, g_res) = grads
            sv_np = saved.numpy()
            bn_backward(bs, _np(gz), y.numpy(), _np(bnw), sv_np[0], sv_np[1], gy_np, g_bnw, g_bnb, True, None,
                        relu_max, g_res, None if mask is None else mask.numpy())
            if gx is not None:
                gik(*gilead, gy_np, _np(w), gx_np)
            if gw is not None or gb is not None:
                gwk(*gwlead, _np(x), gy_np, gw_np, gb_np)
            return tuple(t for t, _ in grads)
        return forward, backward

    def prepare_conv_weight(self, w, shape, algo):
        """Winograd: the transformed filters U = G g G^T (36 or 16 x K x C/G values), which every
        call would otherwise rebuild; they cost more than the products on small batch-1 layers.
        im2col: the weights packed into the GEMM's A panels (a pass over all of them per call).
        direct: the channel-blocked kernel's filter panels (None for depthwise groups and under 8 output channels)."""
        s, dt, w = _C.ConvShape(*shape), str(w.dtype).replace("torch.", ""), w.contiguous()
        if algo in WINOGRAD_ALGOS:
            m = winograd_tile(algo, shape, prepared=True)
            u = torch.empty(_C.conv_winograd_filters_numel(s, m, dt), dtype=w.dtype)
            _C.conv_winograd_prepare_filters(s, m, _np(w), _np(u))
            return u
        if algo in ("im2col", "direct"):
            n = getattr(_C, f"conv_{algo}_prepared_numel")(s, dt)
            if not n:  # direct: depthwise and few-output groups run kernels that take the weight as it is
                return None
            a = torch.empty(n, dtype=w.dtype)
            getattr(_C, f"conv_{algo}_prepare_weight")(s, _np(w), _np(a))
            return a
        return None

    def prepared_form(self, shape, algo, dtype):
        """im2col: the panel layout, which depends on the output size (few pixels: W^T's panels)."""
        if algo == "im2col":
            return _C.conv_im2col_prepared_layout(_C.ConvShape(*shape), str(dtype).replace("torch.", ""))
        return super().prepared_form(shape, algo, dtype)

    def conv2d_backward_input(self, gy, w, gx, shape, algo):
        kernel, lead = _backward_kernel("input", algo, shape)
        return kernel(*lead, _np(gy), _np(w), _np(gx))

    def conv2d_backward_weight(self, x, gy, gw, gb, shape, algo):
        kernel, lead = _backward_kernel("weight", algo, shape)
        return kernel(*lead, _np(x), _np(gy), _np(gw), _np(gb))

    # ---- pooling and batch norm
    def max_pool2d_forward(self, x, y, indices, shape):
        return _C.max_pool2d_forward(_pool(shape), _np(x), _np(y), _np(indices))

    def max_pool2d_backward(self, gy, indices, gx, shape):
        return _C.max_pool2d_backward(_pool(shape), _np(gy), _np(indices), _np(gx))

    def avg_pool2d_forward(self, x, y, shape, count_include_pad, divisor_override):
        return _C.avg_pool2d_forward(_pool(shape), _np(x), _np(y), bool(count_include_pad), int(divisor_override))

    def avg_pool2d_backward(self, gy, gx, shape, count_include_pad, divisor_override):
        return _C.avg_pool2d_backward(_pool(shape), _np(gy), _np(gx), bool(count_include_pad), int(divisor_override))

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                           training, momentum, eps, relu=False, stats=None, relu_max=math.inf, residual=None):
        return _C.batch_norm_forward(_C.BatchNormShape(*shape), _np(x), _np(weight), _np(bias), _np(running_mean),
                                     _np(running_var), _np(y), _np(save_mean), _np(save_invstd), bool(training),
                                     float(momentum), float(eps), _np(stats), bool(relu), float(relu_max),
                                     _np(residual))

    def batch_norm_backward(self, gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training,
                            relu_output=None, relu_max=math.inf, grad_residual=None):
        return _C.batch_norm_backward(_C.BatchNormShape(*shape), _np(gy), _np(x), _np(weight), _np(save_mean),
                                      _np(save_invstd), _np(gx), _np(gw), _np(gb), bool(training), _np(relu_output),
                                      float(relu_max), _np(grad_residual))

    def activation_forward(self, x, residual, activation):
        return _C.activation_forward(_np(x), _np(residual), ACTIVATIONS.index(activation))

    def relu_backward(self, gz, z, gx):
        return _C.relu_backward(_np(gz), _np(z), _np(gx))
