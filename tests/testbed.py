"""The convolution testbed every backend instance runs: one case list and one check of a Backend's
kernel table (conv2d_forward / backward_input / backward_weight) against torch, pruned by the
backend's can_run. Not collected itself: tests/test_conv2d.py runs it over cpp, numba and the
emulated CUDA backend, tests/numba_cuda_checks.py over numba_cuda (under the CUDA simulator or on a
GPU), tests/test_cuda_gpu.py over cuda on a device. Emulators and simulators are slow (one thread
per CUDA thread), so each picks the cases within a cost budget (cases_within)."""
import pytest
import torch
import torch.nn.functional as F

from checks import assert_close, nan_like
from problems import EDGE_WIDTHS, REAL_LAYERS
from pyconv import _args

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

# (N, C, H, W, K, R, S, kwargs)
GRID = [
    (2, 3, 9, 11, 5, 3, 3, dict()),
    (2, 3, 9, 11, 5, 3, 3, dict(stride=2, padding=1)),
    (1, 4, 10, 13, 6, 3, 2, dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1))),
    (2, 6, 13, 10, 4, 5, 3, dict(stride=3, padding=2, dilation=2)),
    (1, 8, 12, 12, 8, 4, 4, dict(padding="same")),
    (1, 8, 12, 12, 8, 4, 3, dict(padding="same", dilation=(1, 3))),
    (1, 5, 7, 9, 7, 3, 3, dict(padding="valid")),
    (2, 8, 9, 9, 12, 3, 3, dict(groups=4, padding=1)),
    (2, 8, 9, 9, 8, 3, 3, dict(groups=8, padding=1)),             # depthwise
    (1, 6, 11, 11, 12, 3, 3, dict(groups=6, stride=2, padding=1)),  # depthwise multiplier 2
    (2, 16, 8, 8, 16, 1, 1, dict()),
    (1, 4, 6, 6, 3, 6, 6, dict()),                                # kernel = input
    (1, 3, 5, 5, 4, 3, 3, dict(padding=4)),                       # padding > kernel
    (1, 2, 1, 1, 3, 1, 1, dict()),
]

# Tiny problems, cheap enough for the CUDA simulator: strides, dilations, groups, depthwise 1x1,
# and Winograd with groups, padding 0 and partial edge tiles.
TINY = [
    (1, 2, 5, 6, 3, 3, 3, dict(padding=1)),
    (2, 4, 6, 5, 2, 3, 2, dict(stride=(2, 1), padding=(1, 0), groups=2)),
    (1, 2, 6, 6, 2, 2, 2, dict(padding=2, dilation=(2, 3))),
    (1, 4, 4, 5, 4, 1, 1, dict(groups=4)),
    (1, 2, 3, 3, 2, 3, 3, dict(stride=2)),
    (1, 4, 4, 5, 4, 3, 3, dict(groups=2)),
    (1, 2, 4, 5, 2, 3, 3, dict(padding=1)),
    (2, 1, 3, 3, 2, 3, 3, dict(padding=1)),
]

# Around the GPU kernels' tiles: the 64 x 64 implicit-GEMM tile (M = K and N*P*Q exactly one tile,
# one past it, K above one tile), a grad-weight long enough to split its reduction (split-K), and
# Winograd with P, Q not multiples of the tile, padding 0/1/2, asymmetric padding, groups, a
# reduction longer than one BK slab (C = 9) and a tile reduction that is split (72 tiles of 2x2).
GPU_EDGES = [
    (1, 3, 8, 8, 64, 1, 1, dict()),
    (1, 2, 5, 13, 65, 1, 1, dict()),
    (2, 16, 6, 6, 70, 1, 1, dict()),
    (3, 5, 8, 8, 7, 3, 3, dict(padding=(1, 2))),
    (2, 8, 7, 7, 12, 3, 3, dict(groups=4, padding=1, stride=2)),
    (2, 3, 7, 9, 5, 3, 3, dict(padding=1)),
    (1, 4, 9, 6, 3, 3, 3, dict()),
    (1, 2, 6, 7, 3, 3, 3, dict(padding=2)),
    (1, 9, 5, 8, 4, 3, 3, dict(padding=(0, 2))),
    (2, 4, 6, 5, 6, 3, 3, dict(groups=2, padding=1)),
    (2, 3, 12, 12, 4, 3, 3, dict(padding=1)),
]

# Depthwise (groups = C = K): the plane kernels' phase planes (strides 1-3, per axis), taps that
# miss a grad-input phase (1x1 and 2x2 at stride 2-3), more taps than one pass holds (5x5, 7x7),
# dilation, asymmetric and oversized padding, widths around the vector and step sizes; the flat
# stride-1 forward (output as wide as the input, up to 16: vectors that wrap rows, a lane mask per
# tap) on a 7x7 plane, at its widest, one past it, with dilation, 1x1 and fewer rows out than in.
DEPTHWISE = [
    (2, 5, 9, 9, 5, 3, 3, dict(groups=5, padding=1, stride=2)),
    (1, 3, 11, 16, 3, 3, 3, dict(groups=3, padding=(0, 1), stride=(1, 2))),
    (1, 3, 10, 13, 3, 3, 3, dict(groups=3, padding=(2, 1), stride=(3, 2), dilation=(1, 2))),
    (2, 4, 12, 9, 4, 5, 5, dict(groups=4, padding=2)),
    (1, 2, 15, 17, 2, 7, 7, dict(groups=2, padding=3, stride=2)),
    (1, 3, 8, 7, 3, 1, 1, dict(groups=3, stride=2)),
    (1, 3, 9, 9, 3, 2, 2, dict(groups=3, stride=3, padding=1)),
    (1, 2, 6, 33, 2, 3, 3, dict(groups=2, padding=4, dilation=2)),
    (3, 4, 1, 1, 4, 3, 3, dict(groups=4, padding=1)),
    (1, 2, 5, 8, 2, 3, 3, dict(groups=2, padding="same")),
    (1, 2, 7, 9, 2, 5, 3, dict(groups=2, padding="valid")),
    (2, 5, 7, 7, 5, 3, 3, dict(groups=5, padding=1)),
    (1, 3, 6, 16, 3, 3, 3, dict(groups=3, padding=(0, 1))),
    (1, 4, 6, 17, 4, 3, 3, dict(groups=4, padding=1)),
    (2, 3, 5, 5, 3, 3, 3, dict(groups=3, padding=(1, 2), dilation=(1, 2))),
    (1, 3, 8, 7, 3, 1, 1, dict(groups=3)),
]

CASES = GRID + TINY + GPU_EDGES + DEPTHWISE


def edge_cases():
    """The tile-edge widths (tests/problems.py) as cases: (case, dtype) pairs."""
    out = []
    for W in EDGE_WIDTHS:
        out.append(((1, 3, 3, W, 7, 3, 3, dict(padding=1)), torch.float32))
        out.append(((1, 3, 3, W, 13, 1, 3, dict(padding=(0, 1))), torch.float64))
    return out


def real_layer_cases():
    """tests/problems.py REAL_LAYERS as (name, case) pairs (float32, no bias in test_conv2d)."""
    return [(name, (N, C, H, W, K, R, S, dict(stride=st, padding=pad, groups=g)))
            for name, N, C, H, W, K, R, S, st, pad, g in REAL_LAYERS]


def case_id(case):
    return f"{case[:7]}{case[7]}".replace(" ", "")


def params_of(case):
    N, C, H, W, K, R, S, kw = case
    return _args.conv2d_params((R, S), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                               kw.get("groups", 1))


def shape_of(case):
    N, C, H, W, K, R, S, kw = case
    return _args.conv2d_shape_of_sizes((N, C, H, W), (K, C // kw.get("groups", 1), R, S), params_of(case))


def cost(case) -> int:
    """Multiply-adds of one forward pass: what an emulator's run time grows with."""
    s = shape_of(case)
    return s.N * s.K * s.P * s.Q * (s.C // s.G) * s.R * s.S


def cases_within(budget, cases=CASES):
    return [c for c in cases if cost(c) <= budget]


def skip_unless_runs(backend, algo, shape):
    """Skips (with the backend's reason) what its can_run refuses, for any of the three passes."""
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"):
        why = backend.can_run(op, algo, shape)
        if why:
            pytest.skip(f"{backend.name}/{algo}: {why}")


def check_table(backend, algo, dtype, case, device="cpu", bias=True, **close_kw):
    """Forward and every gradient of one convolution through backend's kernel table against torch;
    every output starts NaN-filled, so an element the kernels do not write fails."""
    N, C, H, W, K, R, S, kw = case
    g = kw.get("groups", 1)
    x = torch.randn(N, C, H, W, dtype=dtype, device=device)
    w = torch.randn(K, C // g, R, S, dtype=dtype, device=device)
    b = torch.randn(K, dtype=dtype, device=device) if bias else None
    shape = _args.conv2d_shape(x, w, b, params_of(case))
    skip_unless_runs(backend, algo, shape)
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    yr = F.conv2d(leaves[0], leaves[1], leaves[2] if bias else None, **kw)
    gy = torch.randn_like(yr)
    want = torch.autograd.grad(yr, leaves, gy) if yr.numel() else [torch.zeros_like(t) for t in leaves]
    y = nan_like(yr.shape, dtype, device)
    gx, gw = nan_like(x.shape, dtype, device), nan_like(w.shape, dtype, device)
    gb = nan_like(b.shape, dtype, device) if bias else None
    backend.conv2d_forward(x, w, b, y, shape, algo)
    backend.conv2d_backward_input(gy, w, gx, shape, algo)
    backend.conv2d_backward_weight(x, gy, gw, gb, shape, algo)
    got = (y, gx, gw) + ((gb,) if bias else ())
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, (yr.detach(), *want)):
        assert_close(a, e, dtype, f"{backend.name}/{algo} {name}", kind="conv", algo=algo, **close_kw)


def thin(backend, cases, algos):
    """(algo, dtype, case) runs for a slow backend: each case runs each algorithm it can in one dtype,
    alternating, so every (algo, dtype) pair meets about half of the cases."""
    runs = []
    for i, case in enumerate(cases):
        shape = shape_of(case)
        for j, algo in enumerate(a for a in algos if backend.can_run("conv2d_forward", a, shape) is None):
            runs.append((algo, DTYPES[(i + j) % 2], case))
    return runs


def full(backend, cases=CASES):
    """Every (algo, dtype, case) of a fast backend (can_run prunes at run time, with its reason)."""
    return [(algo, dtype, case) for case in cases for algo in backend.conv_algos for dtype in DTYPES]


WINOGRAD_TILES = ("winograd_2x2", "winograd_4x4")


def emulator_runs(backend, budget=12000):
    """The CUDA launch emulator (one std::thread per CUDA thread): direct and im2col over the GRID
    cases within budget and every GPU edge case; Winograd's two tiles over the GPU edge cases (its
    256-thread GEMM blocks make it the slowest); the 'winograd' alias once."""
    runs = thin(backend, cases_within(budget, GRID) + GPU_EDGES, ("direct", "im2col"))
    runs += thin(backend, GPU_EDGES, WINOGRAD_TILES)
    return runs + [("winograd", torch.float32, GPU_EDGES[6])]


def simulator_runs(backend):
    """Numba's CUDA simulator (a Python thread per CUDA thread): direct and im2col over the first five
    TINY cases in both dtypes, then one Winograd run per tiny 3x3 case (F(2x2) in float64 with groups,
    padding 0 and partial tiles; F(4x4) in float32 with padding 1; the alias)."""
    runs = [(a, d, c) for c in TINY[:5] for a in ("direct", "im2col") for d in DTYPES]
    runs += [("winograd_2x2", torch.float64, TINY[5]), ("winograd_4x4", torch.float32, TINY[6]),
             ("winograd", torch.float32, TINY[7])]
    return [r for r in runs if r[0] in backend.conv_algos]


def run_id(run):
    algo, dtype, case = run
    return f"{algo}-{DTYPE_IDS[DTYPES.index(dtype)]}-{case_id(case)}"
