"""conv2d im2col + GEMM vs torch (oneDNN) vs pyconv direct, side by side in one run: GFLOP/s of the
forward pass and of forward + backward (grad-input, grad-weight, grad-bias). Each time is the best
of --rounds interleaved medians: on a shared machine other jobs only ever slow a run down.

    python benchmarks/bench_conv_im2col.py [--batch 8] [--threads 2] [--reps 5] [--no-backward]
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF
from pyconv import _C

# (name, C, H, W, K, R, S, stride, padding): ResNet-18 and VGG-16 layers at 224x224, plus the
# ResNet-50 1x1 (run at batch 32, as quoted for torch) and the 7x7 stem.
LAYERS = [
    ("resnet18.conv1 7x7s2", 3, 224, 224, 64, 7, 7, 2, 3),
    ("resnet18.layer1 3x3", 64, 56, 56, 64, 3, 3, 1, 1),
    ("resnet18.layer2 3x3s2", 64, 56, 56, 128, 3, 3, 2, 1),
    ("resnet18.layer2 3x3", 128, 28, 28, 128, 3, 3, 1, 1),
    ("resnet18.layer2 down1x1s2", 64, 56, 56, 128, 1, 1, 2, 0),
    ("resnet18.layer3 3x3", 256, 14, 14, 256, 3, 3, 1, 1),
    ("resnet18.layer4 3x3", 512, 7, 7, 512, 3, 3, 1, 1),
    ("vgg16.conv1_2 3x3", 64, 224, 224, 64, 3, 3, 1, 1),
    ("vgg16.conv2_2 3x3", 128, 112, 112, 128, 3, 3, 1, 1),
    ("vgg16.conv3_2 3x3", 256, 56, 56, 256, 3, 3, 1, 1),
    ("vgg16.conv4_2 3x3", 512, 28, 28, 512, 3, 3, 1, 1),
    ("vgg16.conv5_2 3x3", 512, 14, 14, 512, 3, 3, 1, 1),
    # CIFAR ResNet-20's strided layers: rows of 16 and 8 output pixels, shorter than or as long as
    # AVX-512's 16 lanes (grad-weight's transposed pack takes them in masked chunks)
    ("cifar.stage2 3x3s2", 16, 32, 32, 32, 3, 3, 2, 1),
    ("cifar.stage3 3x3s2", 32, 16, 16, 64, 3, 3, 2, 1),
    ("cifar.stage2 down1x1s2", 16, 32, 32, 32, 1, 1, 2, 0),
]
POINTWISE = [("resnet50.layer1 1x1 256->64", 256, 56, 56, 64, 1, 1, 1, 0),
             ("resnet50.layer1 1x1 64->256", 64, 56, 56, 256, 1, 1, 1, 0)]


def median_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def bench_layer(layer, N, reps, rounds, backward):
    name, C, H, W, K, R, S, st, pad = layer
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C, R, S)
    b = torch.randn(K)
    y = F.conv2d(x, w, b, stride=st, padding=pad)
    P, Q = y.shape[2:]
    flops = 2.0 * N * K * C * R * S * P * Q
    gy = torch.randn_like(y)
    runs = {"torch": lambda x, w, b: F.conv2d(x, w, b, stride=st, padding=pad)}
    for algo in ("direct", "im2col"):
        runs[algo] = (lambda a: lambda x, w, b: PF.conv2d(x, w, b, stride=st, padding=pad, algo=a,
                                                          backend="cpp"))(algo)
    best = {}
    for _ in range(rounds):
        for key, fn in runs.items():
            with torch.no_grad():
                t_f = median_time(lambda: fn(x, w, b), reps)
            res = best.setdefault(key, {"fwd": 0.0, "fwdbwd": 0.0})
            res["fwd"] = max(res["fwd"], flops / t_f / 1e9)
            if backward:
                xl, wl, bl = (t.clone().requires_grad_() for t in (x, w, b))

                def step():
                    yy = fn(xl, wl, bl)
                    torch.autograd.grad(yy, (xl, wl, bl), gy)
                res["fwdbwd"] = max(res["fwdbwd"], 3 * flops / median_time(step, reps) / 1e9)
    out = best
    s = _C.ConvShape(N, C, H, W, K, R, S, P, Q, 1, st, st, pad, pad, 1, 1)
    ws = [_C.conv_im2col_workspace_bytes(s, "float32", p) for p in range(3)]
    return name, out, ws


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pointwise-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on layer names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pyconv.set_num_threads(args.threads)
    bw = not args.no_backward
    hdr = f"{'layer':30} {'torch':>7} {'direct':>7} {'im2col':>7} {'ratio':>6}"
    if bw:
        hdr += f" | {'torch':>7} {'direct':>7} {'im2col':>7} {'ratio':>6}"
    print(f"GFLOP/s, forward" + (" | forward+backward" if bw else "") + f"; threads={args.threads}")
    print(hdr + "  workspace MiB fwd/dgrad/wgrad")
    ratios = {"main_fwd": [], "main_fwdbwd": [], "pw_fwd": [], "pw_fwdbwd": []}
    todo = [(l, args.batch, "main") for l in LAYERS] + [(l, args.pointwise_batch, "pw") for l in POINTWISE]
    for layer, N, group in todo:
        if args.only and args.only not in layer[0]:
            continue
        name, out, ws = bench_layer(layer, N, args.reps, args.rounds, bw)
        r = out["im2col"]["fwd"] / out["torch"]["fwd"]
        ratios[group + "_fwd"].append(r)
        line = f"{name + f' N={N}':30} {out['torch']['fwd']:7.1f} {out['direct']['fwd']:7.1f} " \
               f"{out['im2col']['fwd']:7.1f} {r:6.2f}"
        if bw:
            rb = out["im2col"]["fwdbwd"] / out["torch"]["fwdbwd"]
            ratios[group + "_fwdbwd"].append(rb)
            line += f" | {out['torch']['fwdbwd']:7.1f} {out['direct']['fwdbwd']:7.1f} " \
                    f"{out['im2col']['fwdbwd']:7.1f} {rb:6.2f}"
        print(line + "  " + "/".join(f"{b / 2**20:.1f}" for b in ws), flush=True)
    for k, v in ratios.items():
        if v:
            print(f"geomean im2col/torch {k}: {np.exp(np.mean(np.log(v))):.2f}")


if __name__ == "__main__":
    main()
