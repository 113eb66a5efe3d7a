"""pyconv._C.gemm vs torch.matmul (sgemm / dgemm), one process, same threads: GFLOP/s of the best of
three interleaved medians (a shared, loaded machine only ever slows a run down).

    python benchmarks/bench_gemm.py [--sizes 256 512 1024 2048] [--dtype float32] [--threads 2]
"""
import argparse
import time

import numpy as np
import torch

from pyconv import _C


def median_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 1536, 2048])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    dt = np.dtype(args.dtype)
    print(f"{'M=N=K':>7} {'pyconv GF/s':>12} {'torch GF/s':>11} {'ratio':>6}")
    ratios = []
    for n in args.sizes:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n)).astype(dt)
        b = rng.standard_normal((n, n)).astype(dt)
        c = np.empty((n, n), dt)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        reps = args.reps if n <= 1024 else max(3, args.reps // 2)
        # Interleave the two so machine noise hits both alike.
        t_ours, t_torch = [], []
        for _ in range(3):
            t_ours.append(median_time(lambda: _C.gemm(a, b, c), reps))
            t_torch.append(median_time(lambda: torch.matmul(ta, tb), reps))
        flops = 2.0 * n * n * n
        g_ours, g_torch = flops / min(t_ours) / 1e9, flops / min(t_torch) / 1e9
        ratios.append(g_ours / g_torch)
        print(f"{n:>7} {g_ours:>12.1f} {g_torch:>11.1f} {g_ours / g_torch:>6.2f}")
    print(f"geomean ratio {np.exp(np.mean(np.log(ratios))):.2f}")


if __name__ == "__main__":
    main()
