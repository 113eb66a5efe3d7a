"""The backend registry: one Backend instance per name (the contract is pyconv.backends.base).
Tests and the benchmark iterate over it; algo='auto' and the error messages ask its can_run."""
from __future__ import annotations

from typing import Dict, List

import torch

from .._errors import PyConvError
from .base import Backend
from .cpp import CppBackend
from .cuda import emulated, gpu
from .numba import NumbaBackend
from .numba_cuda import NumbaCudaBackend

__all__ = ["Backend", "REGISTRY", "load", "available_backends", "resolve", "emulated"]

REGISTRY: Dict[str, Backend] = {b.name: b for b in (CppBackend(), NumbaBackend(), gpu(), NumbaCudaBackend())}


def load(name: str) -> Backend:
    """The registered backend of that name."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise PyConvError(f"backend={name!r}: unknown backend; expected one of {sorted(REGISTRY)} or 'auto'") from None


def available_backends() -> List[str]:
    """Backends whose kernels exist and can run on this machine."""
    return [name for name, b in REGISTRY.items() if b.is_available()]


def resolve(name: str, device: torch.device) -> str:
    """backend='auto' -> cpp / cuda by the data's device; checks availability and device."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name == "auto":
        name = "cuda" if device.type == "cuda" else "cpp"
    be = load(name)
    if device.type != be.device:
        raise PyConvError(f"backend={name!r} runs on {be.device} data, but the input is on {device}")
    if not be.is_available():
        raise PyConvError(f"backend={name!r} is not available on this machine: {be.unavailable_reason()}; "
                          f"available: {available_backends()}")
    return name
