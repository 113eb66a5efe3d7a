"""Winograd vs our direct conv vs torch (oneDNN) on the 3x3 stride-1 layers of ResNet-18, VGG-16 and CIFAR ResNet-20,
side by side in one run. Reports effective GFLOP/s (direct flop count / time), the median of
--repeat timings, and geomean speedups over torch.

  python benchmarks/bench_winograd.py --batch 8 --repeat 5 [--backward] [--tiles]
  python benchmarks/bench_winograd.py --filters   # the filter transform alone (every forward and
                                                  # grad-input call without prepared weights runs it)
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF

# (name, C, K, H=W): distinct 3x3 stride-1 pad-1 layer shapes.
LAYERS = [
    ("resnet18.layer1", 64, 64, 56),
    ("resnet18.layer2", 128, 128, 28),
    ("resnet18.layer3", 256, 256, 14),
    ("resnet18.layer4", 512, 512, 7),
    ("vgg16.conv1_2", 64, 64, 224),
    ("vgg16.conv2_2", 128, 128, 112),
    ("vgg16.conv3_2", 256, 256, 56),
    ("vgg16.conv4_2", 512, 512, 28),
    ("vgg16.conv5_2", 512, 512, 14),
    ("cifar.stage1", 16, 16, 32),  # CIFAR ResNet-20's three stages: grad-weight's slot schedule (16: narrow panels)
    ("cifar.stage2", 32, 32, 16),
    ("cifar.stage3", 64, 64, 8),
]
# Small outputs: where 4x4 tiles are mostly padding (the 'winograd' tile rule).
TILE_LAYERS = [("tiny.2x2", 256, 256, 2), ("tiny.3x3", 256, 256, 3), ("tiny.4x4", 256, 256, 4),
               ("tiny.5x5", 256, 256, 5), ("tiny.6x6", 256, 256, 6), ("resnet18.layer4", 512, 512, 7)]
IMPLS = ["torch", "direct", "winograd_2x2", "winograd_4x4", "winograd"]


def median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run(layers, impls, batch, repeat, backward):
    times = {}
    for name, C, K, HW in layers:
        x = torch.randn(batch, C, HW, HW)
        w = torch.randn(K, C, 3, 3) / (3 * C ** 0.5)
        gy = torch.randn(batch, K, HW, HW)
        flops = 2 * batch * K * C * 9 * HW * HW * (3 if backward else 1)
        row = []
        for impl in impls:
            conv = (lambda a, b: F.conv2d(a, b, padding=1)) if impl == "torch" else \
                (lambda a, b, impl=impl: PF.conv2d(a, b, padding=1, algo=impl))
            if backward:
                xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                fn = lambda: torch.autograd.grad(conv(xg, wg), (xg, wg), gy)  # noqa: E731
            else:
                fn = lambda: conv(x, w)  # noqa: E731
            with torch.no_grad() if not backward else torch.enable_grad():
                t = median_time(fn, repeat)
            times[(name, impl)] = t
            row.append(f"{impl} {flops / t / 1e9:6.1f}")
        print(f"{name:16s} N={batch} C={C:3d} K={K:3d} {HW:3d}x{HW:<3d}  GFLOP/s: " + "  ".join(row), flush=True)
    for impl in impls[1:]:
        ratios = [times[(n, "torch")] / times[(n, impl)] for n, *_ in layers]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"  {impl:13s} speedup over torch: geomean {geo:.2f}x  per layer "
              + " ".join(f"{r:.2f}" for r in ratios))


def run_filters(layers, repeat):
    """The filter transform U = G g G^T into the products' packed panels, per tile size: ms and GB/s
    (filters read + U written), the median of `repeat` calls."""
    from pyconv import _C
    for name, C, K, HW in layers:
        s = _C.ConvShape(1, C, HW, HW, K, 3, 3, HW, HW, 1, 1, 1, 1, 1, 1, 1)
        w = torch.randn(K, C, 3, 3)
        row = []
        for m in (2, 4):
            u = torch.empty(_C.conv_winograd_filters_numel(s, m, "float32"))
            t = median_time(lambda: _C.conv_winograd_prepare_filters(s, m, w.numpy(), u.numpy()), repeat)
            row.append(f"F({m}x{m}) {t * 1e3:7.3f} ms {(u.numel() + w.numel()) * 4 / t / 1e9:5.1f} GB/s")
        print(f"{name:16s} C={C:3d} K={K:3d}  filter transform: " + "  ".join(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--backward", action="store_true", help="forward + grad-input + grad-weight")
    ap.add_argument("--tiles", action="store_true", help="small outputs: 2x2 vs 4x4 tiles")
    ap.add_argument("--filters", action="store_true", help="the filter transform alone (ms, GB/s)")
    ap.add_argument("--only", default="", help="comma-separated layer-name prefixes")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: torch first, then algos")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pyconv.set_num_threads(a.threads)
    layers = TILE_LAYERS if a.tiles else LAYERS
    if a.only:
        layers = [layer for layer in layers if layer[0].startswith(tuple(a.only.split(",")))]
    print(f"torch {torch.__version__}, {a.threads} threads, isa {pyconv._C.isa()}, "
          f"{'forward+backward' if a.backward else 'forward'}, median of {a.repeat}")
    if a.filters:
        run_filters(layers, a.repeat)
    else:
        run(layers, a.impls.split(","), a.batch, a.repeat, a.backward)


if __name__ == "__main__":
    main()
