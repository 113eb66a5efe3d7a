"""Pooling and batch norm: pyconv (cpp backend) vs torch, side by side in one process.

Prints time, GB/s ((bytes read + bytes written) / time, counting each tensor once: the
algorithmic minimum), % of this machine's measured copy bandwidth (same convention: a copy of B
bytes moves 2B) and the speed-up over torch. Usage: python benchmarks/bench_pool_bn.py [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF


def timeit(fn, repeat=7, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--shape", default="32,64,112,112")
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pyconv.set_num_threads(a.threads)
    N, C, H, W = map(int, a.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W)
    dst = torch.empty_like(x)
    t_copy = timeit(lambda: dst.copy_(x), a.repeat)
    copy_bw = 2 * nbytes(x) / t_copy / 1e9
    print(f"shape {N}x{C}x{H}x{W} float32, {a.threads} threads, isa {pyconv._C.isa()}; "
          f"copy bandwidth {copy_bw:.1f} GB/s (read + write)")
    rows = []

    def row(name, f_ours, f_torch, bytes_moved):
        t_o, t_t = timeit(f_ours, a.repeat), timeit(f_torch, a.repeat)
        bw = bytes_moved / t_o / 1e9
        rows.append((name, t_o * 1e3, t_t * 1e3, bw, 100 * bw / copy_bw, t_t / t_o))

    mp = dict(kernel_size=3, stride=2, padding=1)
    y, idx = F.max_pool2d(x, return_indices=True, **mp)
    row("max_pool2d 3x3s2p1 fwd", lambda: PF.max_pool2d(x, **mp), lambda: F.max_pool2d(x, **mp), nbytes(x, y))
    row("max_pool2d 3x3s2p1 fwd+indices", lambda: PF.max_pool2d(x, return_indices=True, **mp),
        lambda: F.max_pool2d(x, return_indices=True, **mp), nbytes(x, y, idx))
    gy = torch.randn_like(y)
    L = [[3, 3], [2, 2], [1, 1], [1, 1]]
    row("max_pool2d 3x3s2p1 bwd",
        lambda: torch.ops.pyconv.max_pool2d_backward(gy, idx, list(x.shape), *L, False, "cpp"),
        lambda: torch.ops.aten.max_pool2d_with_indices_backward(gy, x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx),
        nbytes(gy, idx, x))

    ya = F.avg_pool2d(x, 2)
    row("avg_pool2d 2x2 fwd", lambda: PF.avg_pool2d(x, 2), lambda: F.avg_pool2d(x, 2), nbytes(x, ya))
    ga = torch.randn_like(ya)
    row("avg_pool2d 2x2 bwd",
        lambda: torch.ops.pyconv.avg_pool2d_backward(ga, list(x.shape), [2, 2], [2, 2], [0, 0], False, True, 0, "cpp"),
        lambda: torch.ops.aten.avg_pool2d_backward(ga, x, [2, 2], [2, 2], [0, 0], False, True, None),
        nbytes(ga, x))
    ya3 = F.avg_pool2d(x, 3, 2, 1)
    row("avg_pool2d 3x3s2p1 fwd", lambda: PF.avg_pool2d(x, 3, 2, 1), lambda: F.avg_pool2d(x, 3, 2, 1), nbytes(x, ya3))

    w, b = torch.randn(C), torch.randn(C)
    rm, rv = torch.zeros(C), torch.ones(C)
    row("batch_norm train fwd", lambda: PF.batch_norm(x, rm, rv, w, b, True),
        lambda: F.batch_norm(x, rm, rv, w, b, True), 2 * nbytes(x))
    row("batch_norm eval fwd", lambda: PF.batch_norm(x, rm, rv, w, b, False),
        lambda: F.batch_norm(x, rm, rv, w, b, False), 2 * nbytes(x))
    xg = x.clone().requires_grad_()
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    gyb = torch.randn_like(x)

    def train_step(fn):
        def run():
            out = fn(xg, rm, rv, wg, bg, True)
            torch.autograd.grad(out, (xg, wg, bg), gyb)
        return run
    # forward reads x, writes y; backward reads x and gy, writes gx
    row("batch_norm train fwd+bwd", train_step(PF.batch_norm), train_step(F.batch_norm), 5 * nbytes(x))

    print(f"{'op':34s} {'pyconv ms':>10s} {'torch ms':>10s} {'GB/s':>7s} {'% copy':>7s} {'x torch':>8s}")
    for name, to, tt, bw, pct, ratio in rows:
        print(f"{name:34s} {to:10.2f} {tt:10.2f} {bw:7.1f} {pct:6.0f}% {ratio:8.2f}")


if __name__ == "__main__":
    main()
