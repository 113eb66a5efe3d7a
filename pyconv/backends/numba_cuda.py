"""The numba_cuda backend. Its kernels are not written yet: it reports itself unavailable, and the
registry raises a clear error when it is asked for."""
IMPLEMENTED = False
CONV_ALGOS = ()


def is_available() -> bool:
    return False


def unavailable_reason() -> str:
    return "the numba_cuda kernels are not implemented yet"
