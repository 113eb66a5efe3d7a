"""Array interchange: torch, numpy and cupy in; torch inside; results back in the caller's type.
numpy and cupy arrays are wrapped without copying (torch.from_numpy / DLPack)."""
from __future__ import annotations

import numpy as np
import torch


def kind_of(a) -> str:
    if isinstance(a, torch.Tensor):
        return "torch"
    if isinstance(a, np.ndarray):
        return "numpy"
    if type(a).__module__.startswith("cupy"):
        return "cupy"
    raise TypeError(f"expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(a).__name__}")


def to_torch(a, name: str):
    """(tensor, kind) for one array argument; None passes through."""
    if a is None:
        return None, None
    kind = kind_of(a)
    if kind == "torch":
        return a, kind
    if kind == "numpy":
        if not a.flags.writeable:
            a = a.copy()
        try:
            return torch.from_numpy(a), kind
        except TypeError as e:
            raise TypeError(f"{name}: numpy dtype {a.dtype} is not supported ({e})") from None
    return torch.from_dlpack(a), kind


def from_torch(t: torch.Tensor, kind: str):
    if kind in (None, "torch"):
        return t
    if kind == "numpy":
        return t.detach().numpy()
    import cupy

    return cupy.from_dlpack(t.detach())


def result_kind(*kinds) -> str:
    """The caller's type: the first array argument's kind."""
    for k in kinds:
        if k is not None:
            return k
    return "torch"


def contiguous_nchw(t: torch.Tensor) -> torch.Tensor:
    """Kernels read NCHW; channels_last (or any strided) input is copied once here."""
    return t if t.is_contiguous() else t.contiguous()
