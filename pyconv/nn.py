"""pyconv.nn: drop-in layers with torch.nn's constructor arguments, parameters, buffers and
state_dict keys, plus keyword-only algo= / backend=."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import functional as PF

__all__ = ["Conv2d"]


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
