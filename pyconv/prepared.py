"""Prepared weights for inference: a convolution's weights in the form its kernels consume (batch
norm folded into the filters, the bias merged), built once and rebuilt whenever anything they came
from changes.

Staleness is decided per call from each source tensor's identity, storage, version counter, dtype
and device: an in-place edit (optimizer step, load_state_dict, copy_) bumps the version counter, a
replaced Parameter changes the identity, .to() changes the storage, dtype or device. A deepcopy or
a pickle carries no cache: the copy builds its own from its own tensors.
"""
from __future__ import annotations

import threading
from typing import NamedTuple, Optional, Tuple

import torch


def _key_of(t: Optional[torch.Tensor]):
    if t is None:
        return None
    # inference tensors (made under torch.inference_mode) keep no version counter; they cannot be
    # changed in place outside inference mode. (Asking for it and catching the refusal is the cheap
    # way: this runs for every source tensor on every inference call.)
    try:
        version = t._version
    except RuntimeError:
        version = -1
    return (id(t), t.data_ptr(), version, t.dtype, t.device, t.shape)


def versions_of(sources: tuple) -> Optional[tuple]:
    """(version counter, data pointer) of each source tensor: what a bound call compares on every
    call, beside the sources' identities (an in-place edit bumps the counter; .to(), a new dtype or
    device, comes with a new storage). None where a source keeps no version counter (an inference
    tensor): those callers take the keyed path (_key_of)."""
    try:
        return tuple(None if t is None else (t._version, t.data_ptr()) for t in sources)
    except RuntimeError:
        return None


class Folded(NamedTuple):
    weight: torch.Tensor  # conv weight * bn scale, contiguous
    bias: torch.Tensor  # (conv bias - running mean) * bn scale + bn bias

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


def fold_batch_norm(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps) -> Folded:
    """Eval-mode BN as a per-output-channel scale and shift of the conv (computed in float64 for
    float32 weights, so the folded filters carry one rounding). The BN is affine (FusedConv checks)."""
    dt = torch.float64 if weight.dtype == torch.float32 else weight.dtype
    scale = torch.rsqrt(running_var.to(dt) + eps) * bn_weight.to(dt)
    w = weight.to(dt) * scale.reshape(-1, 1, 1, 1)
    b = -running_mean.to(dt) if bias is None else bias.to(dt) - running_mean.to(dt)
    b = b * scale + bn_bias.to(dt)
    return Folded(w.to(weight.dtype).contiguous(), b.to(weight.dtype).contiguous())


class PreparedCache:
    """One cached value per module, keyed by its source tensors (and any plain values, e.g. eps).
    Safe under concurrent calls: readers take the current entry atomically; a rebuild runs under a
    lock, and a reader that finds a stale entry waits for it."""

    def __init__(self):
        self._entry: Optional[Tuple[tuple, object]] = None
        self._lock = threading.Lock()
        self.plan = None  # a caller's record of the checked call this value serves (functional.py)
        self.bound = None  # the caller's kernel bound to that plan and this value (functional.py)
        self.fast = None  # a layer's whole call bound to that kernel (functional.BoundCall)
        self.train = None  # a layer's training call bound to its plan (functional._BoundTrain)

    def get(self, sources: tuple, extra: tuple, build):
        key = tuple(_key_of(t) for t in sources) + tuple(extra)
        entry = self._entry
        if entry is not None and entry[0] == key:
            return entry[1]
        with self._lock:
            entry = self._entry
            if entry is None or entry[0] != key:
                # ordinary tensors even under torch.inference_mode: the cache outlives the call
                with torch.inference_mode(False), torch.no_grad():
                    entry = (key, build())
                self._entry = entry
            return entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entry = None
            self.plan = None
            self.bound = None
            self.fast = None
            self.train = None

    @property
    def nbytes(self) -> int:
        entry = self._entry
        value = None if entry is None else entry[1]
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        return int(getattr(value, "nbytes", 0))

    def __deepcopy__(self, memo):
        return PreparedCache()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()
