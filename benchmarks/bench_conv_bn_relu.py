"""Training step of the fused conv-BN-ReLU against torch's Conv2d -> BatchNorm2d -> ReLU, side by side
in one run: time (median of --repeat, pyconv and torch interleaved) and memory.

A step is forward (training-mode batch norm, running statistics updated) plus backward for the input,
the conv weight and the BN weight and bias. Memory, per implementation:
  saved    bytes the step keeps alive between forward and backward (tensors saved for backward,
           counted once per storage through torch.autograd.graph.saved_tensors_hooks): the
           activation memory a network pays per layer;
  peak     the step's peak resident memory above what was resident before it (VmHWM, reset through
           /proc/self/clear_refs, in a fresh subprocess after a small warm-up step, large blocks always
           mmapped), native workspaces included.

  python benchmarks/bench_conv_bn_relu.py --batch 8 --repeat 7 [--algo auto] [--json out.json]
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF
from pyconv.bench.suites import SUITES

EPS, MOMENTUM = 1e-5, 0.1


def layers(suite):
    """The suite's conv layers that a BatchNorm2d + ReLU follows in the network (all but none)."""
    return [l for l in SUITES[suite].layers if hasattr(l, "K")]


def make(layer, n, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, layer.C, layer.H, layer.W, generator=g, dtype=dtype)
    w = torch.randn(layer.K, layer.C // layer.groups, layer.R, layer.S, generator=g, dtype=dtype) * 0.1
    gamma, beta = torch.rand(layer.K, generator=g, dtype=dtype) + 0.5, torch.randn(layer.K, generator=g, dtype=dtype)
    return x, w, gamma, beta


def step_fn(impl, layer, x, w, gamma, beta, algo):
    """One training step; returns what it computed (so nothing is optimized away)."""
    st, pad, grp = layer.stride, layer.padding, layer.groups
    xs, ws, gs, bs = (t.detach().requires_grad_() for t in (x, w, gamma, beta))
    rm, rv = torch.zeros(layer.K, dtype=x.dtype), torch.ones(layer.K, dtype=x.dtype)

    def forward():
        if impl == "torch":
            return F.relu(F.batch_norm(F.conv2d(xs, ws, None, st, pad, 1, grp), rm, rv, gs, bs, True, MOMENTUM, EPS))
        return PF.conv_bn_relu(xs, ws, None, gs, bs, rm, rv, st, pad, 1, grp, True, MOMENTUM, EPS, algo=algo)

    def step():
        z = forward()
        return torch.autograd.grad(z, (xs, ws, gs, bs), torch.ones_like(z))

    return forward, step


def saved_bytes(forward):
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = forward()
    del z
    return sum(storages.values())


def median_time(fns, repeat):
    """Median seconds of each function, the functions interleaved in each round."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def peak_child(suite, idx, n, impl, algo, threads):
    """Runs in a fresh process: the step's peak RSS growth in bytes."""
    torch.set_num_threads(threads)
    pyconv.set_num_threads(threads)
    layer = layers(suite)[idx]
    small = layer._replace(H=max(layer.R, 8), W=max(layer.S, 8))
    step_fn(impl, small, *make(small, 1, torch.float32), algo)[1]()  # libraries' one-time setup
    args = make(layer, n, torch.float32)
    _, step = step_fn(impl, layer, *args, algo)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak resident size, to the current one
        f.write("5")
    before = rss_now()
    step()
    return max(0, hwm_now() - before)


def hwm_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_bytes(suite, idx, n, impl, algo, threads):
    code = (f"import sys; sys.path.insert(0, {repr(sys.path[0])}); import bench_conv_bn_relu as b; "
            f"print(b.peak_child({suite!r}, {idx}, {n}, {impl!r}, {algo!r}, {threads}))")
    # a fixed mmap threshold: every large block is mapped on allocation and unmapped on free, so the
    # resident size follows the live bytes (glibc's adaptive threshold would keep freed blocks)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--no-peak", action="store_true", help="skip the subprocess peak-RSS measurement")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pyconv.set_num_threads(a.threads)
    mib = 1 / 2**20
    print(f"{platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
          f"pyconv {pyconv.__version__}, batch {a.batch}, float32, algo={a.algo}")
    print(f"{'layer':28s} {'torch ms':>9s} {'pyconv ms':>9s} {'speed':>6s} | {'saved MiB torch/pyconv':>22s} | "
          f"{'peak MiB torch/pyconv':>21s}")
    rows, ratios, mem_ratios = [], [], []
    for idx, layer in enumerate(layers(a.suite)):
        args = make(layer, a.batch, torch.float32)
        f_t, s_t = step_fn("torch", layer, *args, a.algo)
        f_p, s_p = step_fn("pyconv", layer, *args, a.algo)
        t_t, t_p = median_time([s_t, s_p], a.repeat)
        sv_t, sv_p = saved_bytes(f_t), saved_bytes(f_p)
        pk_t = pk_p = math.nan
        if not a.no_peak:
            pk_t = peak_bytes(a.suite, idx, a.batch, "torch", a.algo, a.threads)
            pk_p = peak_bytes(a.suite, idx, a.batch, "pyconv", a.algo, a.threads)
            mem_ratios.append(max(pk_p, 1) / max(pk_t, 1))
        ratios.append(t_t / t_p)
        row = dict(layer=layer.name, shape=layer.describe(a.batch), torch_ms=1e3 * t_t, pyconv_ms=1e3 * t_p,
                   speed_vs_torch=t_t / t_p, saved_torch=sv_t, saved_pyconv=sv_p, peak_torch=pk_t,
                   peak_pyconv=pk_p, algo=a.algo)
        rows.append(row)
        print(f"{layer.name:28s} {1e3 * t_t:9.2f} {1e3 * t_p:9.2f} {t_t / t_p:5.2f}x | "
              f"{sv_t * mib:10.1f} / {sv_p * mib:9.1f} | {pk_t * mib:9.1f} / {pk_p * mib:9.1f}")
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    line = f"geomean training-step speed vs torch: {geo:.2f}x"
    if mem_ratios:
        line += f"; peak memory pyconv/torch geomean {math.exp(sum(map(math.log, mem_ratios)) / len(mem_ratios)):.2f}"
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=platform.processor() or platform.machine(), threads=a.threads,
                           torch=torch.__version__, batch=a.batch, algo=a.algo, rows=rows, geomean_speed=geo), f,
                      indent=1)


if __name__ == "__main__":
    main()
