"""Launch constants and device helpers shared by the numba.cuda kernels.

Under the simulator every CUDA thread is a Python thread, so blocks are kept small there; the
kernels are identical, only the launch shape changes."""
import numpy as np
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 8 if SIMULATOR else 256       # 1-D blocks (a power of two: block_sum halves it)
MAX_BLOCKS = 8 if SIMULATOR else 8192   # grid-stride loops cover the rest
TILE = 8 if SIMULATOR else 16           # implicit-GEMM tiles are TILE x TILE threads


def blocks_for(work: int) -> int:
    """Blocks of THREADS threads for a grid-stride loop over `work` items (at least 1)."""
    return max(1, min(MAX_BLOCKS, -(-int(work) // THREADS)))


@cuda.jit(device=True)
def block_sum(buf, v):
    """Sum of v over the block (blockDim.x a power of two <= len(buf)), returned to every thread.
    A fixed tree, so the result does not depend on scheduling (deterministic)."""
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()  # buf is reused by the caller's next reduction
    return total


@cuda.jit(device=True)
def grid_start_step():
    """(first index, stride) of a 1-D grid-stride loop, in 64-bit arithmetic."""
    bd = np.int64(cuda.blockDim.x)
    return np.int64(cuda.blockIdx.x) * bd + np.int64(cuda.threadIdx.x), np.int64(cuda.gridDim.x) * bd
