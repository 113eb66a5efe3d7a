"""The backend registry: one entry per backend, each a module exposing the same kernel table
(conv2d_forward, conv2d_backward_input, conv2d_backward_weight, max_pool2d_*, avg_pool2d_*,
batch_norm_*, conv_bn_relu_*). Tests and the benchmark iterate over it."""
from __future__ import annotations

import importlib
from typing import Dict, List, NamedTuple

import torch

from .._errors import PyConvError


class BackendInfo(NamedTuple):
    module: str
    device: str  # "cpu" or "cuda"


REGISTRY: Dict[str, BackendInfo] = {
    "cpp": BackendInfo("pyconv.backends.cpp", "cpu"),
    "numba": BackendInfo("pyconv.backends.numba", "cpu"),
    "cuda": BackendInfo("pyconv.backends.cuda", "cuda"),
    "numba_cuda": BackendInfo("pyconv.backends.numba_cuda", "cuda"),
}


_MODULES: Dict[str, object] = {}


def load(name: str):
    if name not in REGISTRY:
        raise PyConvError(f"backend={name!r}: unknown backend; expected one of {sorted(REGISTRY)} or 'auto'")
    mod = _MODULES.get(name)
    if mod is None:  # imported once, so torch.compile traces a plain dict lookup
        mod = _MODULES[name] = importlib.import_module(REGISTRY[name].module)
    return mod


def available_backends() -> List[str]:
    """Backends whose kernels exist and can run on this machine."""
    out = []
    for name in REGISTRY:
        try:
            if getattr(load(name), "IMPLEMENTED", True) and load(name).is_available():
                out.append(name)
        except ImportError:
            pass
    return out


def resolve(name: str, device: torch.device) -> str:
    """backend='auto' -> cpp / cuda by the data's device; checks availability and device."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name == "auto":
        name = "cuda" if device.type == "cuda" else "cpp"
    mod = load(name)
    if not getattr(mod, "IMPLEMENTED", True):
        raise NotImplementedError(f"backend={name!r}: {mod.unavailable_reason()}")
    want = REGISTRY[name].device
    if device.type != want:
        raise PyConvError(f"backend={name!r} runs on {want} data, but the input is on {device}")
    if not mod.is_available():
        raise PyConvError(f"backend={name!r} is not available on this machine: {mod.unavailable_reason()}; "
                          f"available: {available_backends()}")
    return name


# Import every backend module up front (each imports its heavy dependencies lazily), so that
# torch.compile never traces an import.
for _name in REGISTRY:
    try:
        load(_name)
    except ImportError:
        pass
