"""The Numba CPU backend: pyconv.kernels.cpu (kernels/cpu), @njit(parallel=True, cache=True).
Tensors reach the kernels as zero-copy flat numpy views; the first call per dtype compiles (or loads
the on-disk cache)."""
from __future__ import annotations

try:
    import numba as _numba
except ImportError as _e:  # pragma: no cover - depends on the environment
    _numba = None
    _import_error = str(_e)

IMPLEMENTED = True
CONV_ALGOS = ("direct", "im2col") if _numba is not None else ()


def is_available() -> bool:
    return _numba is not None


def unavailable_reason() -> str:
    return "" if _numba is not None else f"numba is not importable: {_import_error}"


def set_num_threads(n: int) -> None:
    # numba cannot run more threads than it started with (NUMBA_NUM_THREADS, default: the core count)
    _numba.set_num_threads(max(1, min(int(n), _numba.config.NUMBA_NUM_THREADS)))


def _flat(t):
    """Flat writable numpy view of a contiguous CPU tensor (None passes through)."""
    return None if t is None else t.detach().numpy().reshape(-1)


def _kernels(name):
    import importlib

    return importlib.import_module(f"pyconv.kernels.cpu.{name}")


def _conv_module(algo):
    if algo == "direct":
        return _kernels("conv_direct")
    if algo == "im2col":
        return _kernels("conv_im2col")
    raise NotImplementedError(f"algo={algo!r} is not implemented in the numba backend")


def conv2d_forward(x, w, b, y, shape, algo):
    _conv_module(algo).forward(_flat(x), _flat(w), _flat(b), _flat(y), shape)


def conv2d_backward_input(gy, w, gx, shape, algo):
    _conv_module(algo).backward_input(_flat(gy), _flat(w), _flat(gx), shape)


def conv2d_backward_weight(x, gy, gw, gb, shape, algo):
    _conv_module(algo).backward_weight(_flat(x), _flat(gy), _flat(gw), _flat(gb), shape)
