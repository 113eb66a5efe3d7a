"""Host memory of pyconv's CPU kernels: a cache of large buffers, reused instead of freed.

Kernel outputs of at least 1 MiB on the CPU (and the kernels' large scratch buffers) come from a
cache of blocks advised as transparent huge pages (from 16 MiB on, whole 2 MiB huge pages); each
tensor starts at its own offset below 4 KiB into its block, so tensors a kernel streams together do
not alias in the L1 sets. A tensor's block of 8 MiB or more returns to the cache when the tensor is
freed, and the next output of about its size reuses it: a network run in a loop touches the same
pages every step instead of page-faulting fresh memory (glibc gives blocks past 32 MB back to the
system on every free). Of smaller blocks (from 256 KiB for the kernels' scratch) at most 24 MiB are
kept, the smallest going back to malloc first (a cache of every size held more memory at a training
step's peak than torch; none at all left small workspaces page-faulting fresh pages call after
call; a miss costs a fault per page, so the largest are the ones worth keeping). Freed blocks kept
in the cache
stay under a limit (default 1 GiB; ``set_cache_limit``), and ``empty_cache()`` hands them all back.
"""
from __future__ import annotations

import math
import operator
from typing import Dict

import numpy as np
import torch

from . import _C, _config
from ._errors import PyConvError

_MIN_BYTES = _C.host_cache_min_bytes()
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _numpy_dtype(dtype: torch.dtype):
    npt = _NUMPY_DTYPES.get(dtype)
    if npt is None:  # (the kernels' other outputs: int64 pooling indices)
        npt = _NUMPY_DTYPES[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
    return npt


def _cache_array(shape, npt: np.dtype, nbytes: int) -> np.ndarray:
    """A block of the cache as a numpy array of shape and dtype npt (nbytes of them)."""
    return _C.host_cache_buffer(nbytes).view(npt).reshape(shape)


def cached_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor from the cache (a plain torch.empty below 1 MiB). Typed and shaped
    on the numpy side: a torch .view() of the cache's byte tensor would be a view, which autograd
    forbids modifying in place when an op returns it (relu_ or += on a layer's output)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(_cache_array(shape, _numpy_dtype(dtype), nbytes))


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Kernel outputs (large CPU ones from the cache); NaN-filled under PYCONV_DEBUG_FILL so
    unwritten elements fail the tests."""
    if like.is_cpu:
        t = cached_empty(shape, like.dtype)
    else:
        t = torch.empty(shape, dtype=like.dtype, device=like.device)
    if _config.DEBUG_FILL:
        t.fill_(float("nan"))
    return t


def new_output_array(shape, dtype: torch.dtype):
    """A CPU kernel output as new_output makes it, and its numpy view: (tensor, array). For callers
    that hand the buffer to pyconv._C themselves, one numpy allocation wrapped by torch costs less
    than torch.empty's argument parsing plus a .numpy() later (on a small layer's training step,
    eleven outputs: about 20 us of its ~200)."""
    npt = _NUMPY_DTYPES[dtype]
    nbytes = math.prod(shape) * npt.itemsize
    a = np.empty(shape, npt) if nbytes < _MIN_BYTES else _cache_array(shape, npt, nbytes)
    if _config.DEBUG_FILL:
        a.fill(np.nan)
    return torch.from_numpy(a), a


def stats() -> Dict[str, int]:
    """in_use_bytes (blocks held by live tensors and running kernels), cached_bytes (freed blocks
    kept for reuse), limit_bytes, hits and misses (requests served from the cache or not)."""
    return dict(_C.host_cache_stats())


def set_cache_limit(nbytes: int) -> None:
    """Keep at most nbytes of freed blocks (0: keep none, every block goes back to the system)."""
    nbytes = operator.index(nbytes)
    if nbytes < 0:
        raise PyConvError(f"set_cache_limit: nbytes={nbytes} but expected a size >= 0")
    _C.host_cache_set_limit(nbytes)


def empty_cache() -> None:
    """Give every cached (freed) block back to the system; blocks in use are unaffected."""
    _C.host_cache_empty()
