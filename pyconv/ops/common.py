"""Helpers shared by every op module."""
from __future__ import annotations

import torch

from .. import _config


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Kernel outputs; NaN-filled under PYCONV_DEBUG_FILL so unwritten elements fail the tests."""
    t = torch.empty(shape, dtype=like.dtype, device=like.device)
    if _config.DEBUG_FILL:
        t.fill_(float("nan"))
    return t
