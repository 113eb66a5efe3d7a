"""Numba backend vs our C++ backend (algo direct) vs torch on the ResNet-18 3x3 layers.

Calls each backend's kernel table directly (no custom-op overhead), float32, forward / grad-input /
grad-weight. Reports the first call (numba: compile or cache load) separately from the steady state
(median of --reps calls) in GFLOP/s, then the geometric mean of numba / cpp per pass.

    python benchmarks/bench_numba.py --batch 8 --reps 5
    python benchmarks/bench_numba.py --layers layer2.3x3,layer3.3x3,layer4.3x3 --base cpp:winograd \
        --impls numba:winograd,numba:winograd_2x2,numba:winograd_4x4,cpp:winograd,numba:im2col,torch
Implementations that cannot run a layer (winograd on a strided one) print '-' there.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from pyconv import _args, backends
from pyconv.problem import winograd_unsupported

# (name, C, H, K, stride): the 3x3 convolutions of ResNet-18 at 224x224 input
LAYERS = [
    ("layer1.3x3", 64, 56, 64, 1),
    ("layer2.3x3s2", 64, 56, 128, 2),
    ("layer2.3x3", 128, 28, 128, 1),
    ("layer3.3x3s2", 128, 28, 256, 2),
    ("layer3.3x3", 256, 14, 256, 1),
    ("layer4.3x3s2", 256, 14, 512, 2),
    ("layer4.3x3", 512, 7, 512, 1),
]
PASSES = ("fwd", "dgrad", "wgrad")


def runner(impl, pas, x, w, gy, shape, kw):
    """A zero-argument callable running one pass of one implementation."""
    if impl == "torch":
        if pas == "fwd":
            return lambda: F.conv2d(x, w, **kw)
        mask = [pas == "dgrad", pas == "wgrad", False]
        return lambda: torch.ops.aten.convolution_backward(gy, x, w, None, list(kw["stride"]),
                                                           list(kw["padding"]), [1, 1], False, [0, 0], 1, mask)
    backend, algo = impl.split(":")
    mod = backends.load(backend)
    if pas == "fwd":
        y = torch.empty_like(gy)
        return lambda: mod.conv2d_forward(x, w, None, y, shape, algo)
    if pas == "dgrad":
        gx = torch.empty_like(x)
        return lambda: mod.conv2d_backward_input(gy, w, gx, shape, algo)
    gw = torch.empty_like(w)
    return lambda: mod.conv2d_backward_weight(x, gy, gw, None, shape, algo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impls", default="numba:direct,numba:im2col,cpp:direct,torch")
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--base", default="cpp:direct", help="the implementation ratios are taken to")
    a = ap.parse_args()
    import pyconv

    torch.set_num_threads(a.threads)
    pyconv.set_num_threads(a.threads)
    impls = a.impls.split(",")
    passes = a.passes.split(",")
    print(f"batch {a.batch}, float32, {a.threads} threads, median of {a.reps}; GFLOP/s (first call in s)")
    print(f"{'layer':14s} {'pass':6s} " + " ".join(f"{i:>22s}" for i in impls))
    rates = {(i, p): [] for i in impls for p in passes}
    for name, C, H, K, st in LAYERS:
        if a.layers and name not in a.layers.split(","):
            continue
        torch.manual_seed(0)
        x = torch.randn(a.batch, C, H, H)
        w = torch.randn(K, C, 3, 3)
        kw = dict(stride=(st, st), padding=(1, 1))
        shape = _args.conv2d_shape(x, w, None, _args.conv2d_params((3, 3), st, 1, 1, 1))
        gy = torch.randn(a.batch, K, shape.P, shape.Q)
        runs = [not ("winograd" in i and winograd_unsupported(shape)) for i in impls]
        for pas in passes:
            fns = [runner(impl, pas, x, w, gy, shape, kw) if ok else None for impl, ok in zip(impls, runs)]
            firsts = []
            for fn in fns:
                if fn is None:
                    firsts.append(0.0)
                    continue
                t0 = time.perf_counter()
                fn()
                firsts.append(time.perf_counter() - t0)
            # round-robin repetitions: every implementation sees the same machine load (shared hosts)
            times = [[] for _ in impls]
            for _ in range(a.reps):
                for fn, ts in zip(fns, times):
                    if fn is None:
                        continue
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
            cells = []
            for impl, ts, first in zip(impls, times, firsts):
                if not ts:
                    cells.append("-")
                    continue
                g = shape.flops / statistics.median(ts) / 1e9
                rates[(impl, pas)].append(g)
                cells.append(f"{g:8.1f} ({first:8.3f}s)")
            print(f"{name:14s} {pas:6s} " + " ".join(f"{c:>22s}" for c in cells), flush=True)
    print(f"geomean GFLOP/s (over the layers each ran) and ratio to {a.base}")
    for pas in passes:
        gm = {i: math.exp(statistics.fmean(math.log(v) for v in rates[(i, pas)])) if rates[(i, pas)] else math.nan
              for i in impls}
        base = gm.get(a.base)
        print(f"  {pas:6s} " + "  ".join(f"{i}={gm[i]:.1f}" + (f" ({gm[i] / base:.2f}x)" if base else "")
                                         for i in impls))


if __name__ == "__main__":
    main()
