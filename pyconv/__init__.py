"""pyconv: hand-written convolution, pooling and batch-norm kernels (C++, CUDA, Numba),
verified against PyTorch."""
import torch

from ._errors import PyConvError
from ._version import __version__
from . import _C, ops  # noqa: F401  (ops registers torch.ops.pyconv.*)
from . import functional, nn
from .convert import convert
from .functional import PreparedConv, prepare
from . import backends
from .backends import available_backends
from . import autotune  # noqa: E402  (callable: pyconv.autotune(True) turns on measured algo='auto')
from .autotune import explain_algo  # noqa: E402

__all__ = ["PyConvError", "convert", "prepare", "PreparedConv", "__version__", "available_backends", "set_num_threads", "get_num_threads",
           "functional", "nn", "autotune", "explain_algo"]


def set_num_threads(n: int) -> None:
    """Threads used by the CPU backends (default: torch.get_num_threads())."""
    import operator

    n = operator.index(n)
    if n < 1:
        raise PyConvError(f"set_num_threads: n={n} but expected a positive thread count")
    for be in backends.REGISTRY.values():
        be.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


_C.set_num_threads(max(1, torch.get_num_threads()))
_C.set_debug_fill(__import__("pyconv._config", fromlist=["DEBUG_FILL"]).DEBUG_FILL)
