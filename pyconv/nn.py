"""pyconv.nn: drop-in layers with torch.nn's constructor arguments, parameters, buffers and
state_dict keys, plus keyword-only algo= / backend=."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import functional as PF

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "ConvBNReLU2d"]


class Conv2d(torch.nn.Conv2d):
    def __init__(self, *args, algo: str = "auto", backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algo, self.backend = algo, backend

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return PF.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                         algo=self.algo, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", algo={self.algo!r}, backend={self.backend!r}"


class MaxPool2d(torch.nn.MaxPool2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return PF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class AvgPool2d(torch.nn.AvgPool2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return PF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class BatchNorm2d(torch.nn.BatchNorm2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        # torch.nn.modules.batchnorm._BatchNorm.forward, with pyconv's batch_norm.
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum=None: cumulative moving average over the batches seen
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return PF.batch_norm(input, self.running_mean if use_running else None,
                             self.running_var if use_running else None, self.weight, self.bias, bn_training,
                             factor, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class ConvBNReLU2d(torch.nn.Module):
    """relu(bn(conv(x))) through the fused pyconv.functional.conv_bn_relu. Holds a Conv2d `conv` and a
    BatchNorm2d `bn`, so its state dict is the two layers' (conv.weight, bn.running_mean, ...)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, eps=1e-5, momentum=0.1, *, algo: str = "auto", backend: str = "auto"):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           algo=algo, backend=backend)
        self.bn = BatchNorm2d(out_channels, eps=eps, momentum=momentum, backend=backend)
        self.algo, self.backend = algo, backend

    @classmethod
    def from_modules(cls, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, *, algo="auto", backend="auto"):
        """The fused layer over an existing Conv2d and BatchNorm2d (the same parameter and buffer tensors)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"ConvBNReLU2d: padding_mode={conv.padding_mode!r} cannot be fused; expected 'zeros'")
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("ConvBNReLU2d: needs a BatchNorm2d with affine=True and track_running_stats=True")
        from .convert import _as_pyconv

        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.conv = _as_pyconv(conv, Conv2d, algo, backend)
        new.bn = _as_pyconv(bn, BatchNorm2d, algo, backend)
        new.algo, new.backend = algo, backend
        return new

    def forward(self, input):
        bn = self.bn
        factor = bn.momentum if bn.momentum is not None else 0.0
        if self.training:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as torch's BatchNorm2d
                factor = 1.0 / float(bn.num_batches_tracked)
        c = self.conv
        return PF.conv_bn_relu(input, c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                               c.stride, c.padding, c.dilation, c.groups, self.training, factor, bn.eps,
                               algo=self.algo, backend=self.backend)

    def extra_repr(self):
        return f"algo={self.algo!r}, backend={self.backend!r}"
