"""The activation epilogue of the fused ops, x = act(x + residual), on every backend's kernel table
that runs here (the emulated CUDA backend included), against torch: NaN and Inf positions, -0.0,
unaligned buffers (the vector kernels' scalar tails), each activation with and without a residual;
then the same epilogue applied inside each forward convolution algorithm."""
import pytest
import torch
import torch.nn.functional as F

import pyconv
import testbed
from checks import assert_close, nan_like
from pyconv import backends
from pyconv.problem import ACTIVATIONS, CONV_ALGOS

TABLES = [backends.load(b) for b in pyconv.available_backends() if backends.load(b).device == "cpu"]
if backends.emulated().is_available():
    TABLES.append(backends.emulated())
REF = {"none": lambda v: v, "relu": torch.relu, "relu6": F.relu6}


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,offset", [(37, 0), (64, 1)])
def test_activation_forward(table, activation, residual, dtype, n, offset):
    g = torch.Generator().manual_seed(n + offset)
    base = torch.randn(n + offset, generator=g, dtype=dtype) * 8  # values on both sides of 0 and 6
    base[offset:offset + 5] = torch.tensor([float("nan"), 0.0, -0.0, float("inf"), -float("inf")], dtype=dtype)
    x = base[offset:]
    r = (torch.randn(n + offset, generator=g, dtype=dtype) * 4)[offset:] if residual else None
    if r is not None:
        r[3] = 1.0  # inf + 1
    want = REF[activation](x + r if residual else x)
    got = x.clone() if offset == 0 else torch.empty(n + offset, dtype=dtype)[offset:].copy_(x)
    table.activation_forward(got, r, activation)
    assert_close(got, want, dtype, f"{table.name} {activation}", bound=0.0)  # exact: one add, one clamp


# ---- the same epilogue inside the forward convolution (conv2d_activation_forward): every algorithm
# of every CPU table over the testbed's general and depthwise cases, outputs NaN-filled first.
CPU_TABLES = [t for t in TABLES if t.device == "cpu" and t.name in pyconv.available_backends()]
EPILOGUES = [("relu", True, torch.float32), ("relu6", False, torch.float64), ("none", True, torch.float64),
             ("relu6", True, torch.float32)]


@pytest.mark.parametrize("table", CPU_TABLES, ids=lambda t: t.name)
@pytest.mark.parametrize("algo", CONV_ALGOS)
@pytest.mark.parametrize("case", testbed.GRID + testbed.DEPTHWISE, ids=testbed.case_id)
def test_conv_epilogue(table, algo, case):
    N, C, H, W, K, R, S, kw = case
    shape = testbed.shape_of(case)
    why = table.can_run("conv2d_forward", algo, shape)
    if why:
        pytest.skip(why)
    g = torch.Generator().manual_seed(N * C * H * W + K)
    for activation, residual, dtype in EPILOGUES:
        x = torch.randn(N, C, H, W, generator=g, dtype=dtype)
        w = torch.randn(K, C // kw.get("groups", 1), R, S, generator=g, dtype=dtype)
        b = torch.randn(K, generator=g, dtype=dtype)
        y0 = F.conv2d(x, w, b, **kw)
        r = torch.randn(y0.shape, generator=g, dtype=dtype) * 2 if residual else None
        want = REF[activation](y0 + r if residual else y0)
        got = nan_like(y0.shape, dtype, "cpu")
        table.conv2d_activation_forward(x, w, b, r, got, shape, algo, activation)
        assert_close(got, want, dtype, f"{table.name}/{algo} {activation} residual={residual}", kind="conv", algo=algo)
