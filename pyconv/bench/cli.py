"""pyconv-bench: pyconv against PyTorch, timed side by side in one process (first version:
conv2d forward on the quick suite)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF

QUICK = [  # name, N, C, H, W, K, R, S, stride, padding, groups
    ("resnet18.layer1.3x3", 8, 64, 56, 56, 64, 3, 3, 1, 1, 1),
    ("resnet18.layer3.3x3", 8, 256, 14, 14, 256, 3, 3, 1, 1, 1),
    ("mobilenet_v2.dw3x3", 8, 144, 56, 56, 144, 3, 3, 1, 1, 144),
]


def _median_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyconv-bench", description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"pyconv {pyconv.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'layer':24} {'pyconv ms':>10} {'torch ms':>10} {'GFLOP/s':>9} {'ratio':>6}")
    for name, N, C, H, W, K, R, S, st, pad, g in QUICK:
        x, w = torch.randn(N, C, H, W), torch.randn(K, C // g, R, S)
        tp = _median_time(lambda: PF.conv2d(x, w, None, st, pad, 1, g, algo="direct"), args.repeats)
        tt = _median_time(lambda: F.conv2d(x, w, None, st, pad, 1, g), args.repeats)
        P = (H + 2 * pad - R) // st + 1
        flops = 2 * N * K * P * P * (C // g) * R * S
        print(f"{name:24} {tp * 1e3:10.2f} {tt * 1e3:10.2f} {flops / tp / 1e9:9.1f} {tt / tp:6.2f}")
    return 0
