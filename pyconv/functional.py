"""pyconv.functional: mirrors torch.nn.functional; adds keyword-only algo= and backend=.
Accepts torch tensors (autograd works), numpy arrays (returns numpy) and cupy arrays (returns cupy)."""
from __future__ import annotations

import torch

from . import _args, autotune, backends
from ._arrays import contiguous_nchw, from_torch, result_kind, to_torch

__all__ = ["conv2d"]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto", backend="auto"):
    x, kx = to_torch(input, "input")
    w, kw = to_torch(weight, "weight")
    b, kb = to_torch(bias, "bias")
    _args.check_float_tensor(x, "input", (3, 4))
    _args.check_float_tensor(w, "weight", (4,))
    params = _args.conv2d_params(tuple(w.shape[2:]), stride, padding, dilation, groups)
    batched = x.dim() == 4
    if not batched:
        x = x.unsqueeze(0)
    shape = _args.conv2d_shape(x, w, b, params)
    be = backends.resolve(backend, x.device)
    algo = autotune.resolve_conv_algo(algo, shape, be, dtype=x.dtype)
    y = torch.ops.pyconv.conv2d(contiguous_nchw(x), w, b, list(params.stride), list(params.padding),
                                list(params.dilation), params.groups, algo, be)
    if not batched:
        y = y.squeeze(0)
    return from_torch(y, result_kind(kx, kw, kb))
