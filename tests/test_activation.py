"""The activation epilogue of the fused ops, x = act(x + residual), on every backend's kernel table
that runs here (the emulated CUDA backend included), against torch: NaN and Inf positions, -0.0,
unaligned buffers (the vector kernels' scalar tails), each activation with and without a residual."""
import pytest
import torch
import torch.nn.functional as F

import pyconv
from checks import assert_close
from pyconv import backends
from pyconv.problem import ACTIVATIONS

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
