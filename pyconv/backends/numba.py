"""The Numba CPU backend: pyconv.kernels.cpu (kernels/cpu), @njit(parallel=True, cache=True).
Tensors reach the kernels as zero-copy flat numpy views; the first call per dtype compiles (or loads
the on-disk cache)."""
from __future__ import annotations

import threading

import numpy as _np

from ..problem import ACTIVATIONS, CONV_ALGOS, WINOGRAD_ALGOS
from .base import Backend

try:
    import numba as _numba
except ImportError as _e:  # pragma: no cover - depends on the environment
    _numba = None
    _import_error = str(_e)


_layer_lock = threading.Lock()
_layer_started = False


def _start_threading_layer() -> None:
    """Starts numba's threading layer (once, before the first numba call that would), keeping torch's
    thread count: numba's OpenMP layer sets the calling thread's OpenMP thread count to
    NUMBA_NUM_THREADS when it starts, and torch reads that same count (torch.set_num_threads(1), then
    a first numba kernel, left torch on 2 threads). Not at import: pyconv loads this backend even
    for users who never run it."""
    global _layer_started
    if _layer_started:
        return
    import torch

    with _layer_lock:
        if not _layer_started:
            keep = torch.get_num_threads()
            _numba.get_num_threads()  # launches the layer
            if torch.get_num_threads() != keep:
                torch.set_num_threads(keep)
            _layer_started = True

# Below this much work (multiply-adds or elements) a call runs on the calling thread alone: waking
# numba's pool costs ~0.1-10 ms on a loaded machine, far more than a small problem's compute.
SERIAL_WORK = 1 << 20


class _serial_if_small:
    """Every kernel call's entry: starts numba's threading layer on first use, and runs small work on
    the calling thread alone."""

    def __init__(self, work):
        self.small = work < SERIAL_WORK

    def __enter__(self):
        _start_threading_layer()
        if self.small:
            self.saved = _numba.get_num_threads()
            _numba.set_num_threads(1)

    def __exit__(self, *exc):
        if self.small:
            _numba.set_num_threads(self.saved)


def _flat(t):
    """Flat writable numpy view of a contiguous CPU tensor (None passes through)."""
    return None if t is None else t.detach().numpy().reshape(-1)


def _or_dummy(t, like):
    """Numba needs one array type per argument: absent optional buffers become a 1-element dummy."""
    return (_np.zeros(1, dtype=like.dtype), False) if t is None else (_flat(t), True)


def _conv(algo, entry, *args):
    """kernels.cpu.<algo module>.<entry>(*args); the Winograd entry points also take the algo name
    (it sets the tile)."""
    if algo in WINOGRAD_ALGOS:
        from ..kernels.cpu import winograd

        return getattr(winograd, entry)(*args, algo)
    if algo == "direct":
        from ..kernels.cpu import conv_direct as mod
    else:
        from ..kernels.cpu import conv_im2col as mod
    return getattr(mod, entry)(*args)


class NumbaBackend(Backend):
    name = "numba"
    device = "cpu"
    conv_algos = CONV_ALGOS if _numba is not None else ()

    def is_available(self) -> bool:
        return _numba is not None

    def unavailable_reason(self) -> str:
        return "" if _numba is not None else f"numba is not importable: {_import_error}"

    def set_num_threads(self, n: int) -> None:
        if _numba is None:
            return
        # numba cannot run more threads than it started with (NUMBA_NUM_THREADS, default: the core count)
        _start_threading_layer()
        _numba.set_num_threads(max(1, min(int(n), _numba.config.NUMBA_NUM_THREADS)))

    # ---- convolution
    def conv2d_forward(self, x, w, b, y, shape, algo, stats=None, prepared=None):
        """stats: a pass over y after the conv (the numba conv kernels have no epilogue hook)."""
        with _serial_if_small(shape.flops // 2):
            _conv(algo, "forward", _flat(x), _flat(w), _flat(b), _flat(y), shape)
        if stats is not None:
            from ..kernels.cpu import batch_norm

            with _serial_if_small(y.numel() * 4):
                batch_norm.channel_sums(_flat(y), _flat(stats), shape.N, shape.K, shape.P * shape.Q)

    def conv2d_backward_input(self, gy, w, gx, shape, algo):
        with _serial_if_small(shape.flops // 2):
            _conv(algo, "backward_input", _flat(gy), _flat(w), _flat(gx), shape)

    def conv2d_backward_weight(self, x, gy, gw, gb, shape, algo):
        with _serial_if_small(shape.flops // 2):
            _conv(algo, "backward_weight", _flat(x), _flat(gy), _flat(gw), _flat(gb), shape)

    # ---- pooling
    def max_pool2d_forward(self, x, y, indices, shape):
        from ..kernels.cpu import pool

        s = shape
        with _serial_if_small(x.numel() * 4):
            pool.max_forward(_flat(x), _flat(y), _flat(indices), s.N * s.C, s.H, s.W, s.P, s.Q, s.kernel_h,
                             s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w)

    def max_pool2d_backward(self, gy, indices, gx, shape):
        from ..kernels.cpu import pool

        s = shape
        with _serial_if_small(gx.numel() * 4):
            pool.max_backward(_flat(gy), _flat(indices), _flat(gx), s.N * s.C, s.H * s.W, s.P * s.Q)

    def avg_pool2d_forward(self, x, y, shape, count_include_pad, divisor_override):
        from ..kernels.cpu import pool

        s = shape
        with _serial_if_small(x.numel() * 4):
            pool.avg_forward(_flat(x), _flat(y), s.N * s.C, s.H, s.W, s.P, s.Q, s.kernel_h, s.kernel_w,
                             s.stride_h, s.stride_w, s.pad_h, s.pad_w, bool(count_include_pad), int(divisor_override))

    def avg_pool2d_backward(self, gy, gx, shape, count_include_pad, divisor_override):
        from ..kernels.cpu import pool

        s = shape
        with _serial_if_small(gx.numel() * 4):
            pool.avg_backward(_flat(gy), _flat(gx), s.N * s.C, s.H, s.W, s.P, s.Q, s.kernel_h, s.kernel_w,
                              s.stride_h, s.stride_w, s.pad_h, s.pad_w, bool(count_include_pad),
                              int(divisor_override))

    # ---- batch norm
    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                           training, momentum, eps, relu=False, stats=None):
        from ..kernels.cpu import batch_norm

        xf = _flat(x)
        w, has_w = _or_dummy(weight, xf)
        b, has_b = _or_dummy(bias, xf)
        rm, has_rm = _or_dummy(running_mean, xf)
        rv, has_rv = _or_dummy(running_var, xf)
        with _serial_if_small(x.numel() * 4):
            batch_norm.forward(xf, w, has_w, b, has_b, rm, rv, has_rm and has_rv, _flat(y), _flat(save_mean),
                               _flat(save_invstd), shape.N, shape.C, shape.L, bool(training),
                               float(momentum if momentum is not None else 0.0), float(eps),
                               *_or_dummy(stats, _np.zeros(1)), bool(relu))

    def batch_norm_backward(self, gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training,
                            relu_output=None):
        from ..kernels.cpu import batch_norm

        xf = _flat(x)
        w, has_w = _or_dummy(weight, xf)
        gxf, want_gx = _or_dummy(gx, xf)
        gwf, want_gw = _or_dummy(gw, xf)
        gbf, want_gb = _or_dummy(gb, xf)
        with _serial_if_small(x.numel() * 4):
            batch_norm.backward(_flat(gy), xf, w, has_w, _flat(save_mean), _flat(save_invstd), gxf, want_gx,
                                gwf, want_gw, gbf, want_gb, shape.N, shape.C, shape.L, bool(training),
                                *_or_dummy(relu_output, xf))

    # ---- relu
    def activation_forward(self, x, residual, activation):
        from ..kernels.cpu import relu

        xf = _flat(x)
        with _serial_if_small(x.numel()):
            relu.activation_forward(xf, *_or_dummy(residual, xf), ACTIVATIONS.index(activation))

    def relu_backward(self, gz, z, gx):
        from ..kernels.cpu import relu

        with _serial_if_small(z.numel()):
            relu.backward(_flat(gz), _flat(z), _flat(gx))
