"""The comparison helper and tolerances every test shares. Not collected itself.

assert_close compares, in order: the shapes; the non-finite positions, element by element (NaN where
the reference has NaN, +Inf / -Inf where it has the same infinity); then the finite values by their
norm-wise relative error, ||a - e|| / ||e|| in float64, so a bound does not depend on the reduction
length. The bounds are per operation family and dtype (TOLERANCES); convolution's float32 bound also
depends on the algorithm (Winograd's transforms amplify float32 rounding, F(4x4) more than F(2x2)).
"""
import torch

# family -> (float32 bound, float64 bound): the relative errors each family's tests accept.
TOLERANCES = {
    "conv": (5e-5, 1e-9),         # direct, im2col (the float32 bound of Winograd: WINOGRAD_TOL32)
    "pool": (1e-6, 1e-12),        # test_pool.py (the CPU backends through pyconv.functional)
    "batch_norm": (2e-5, 1e-10),  # test_batch_norm.py
    "table": (2e-5, 1e-12),       # pool_bn_checks.py / numba_cuda_checks.py: a kernel table's pool / BN
    "gpu": (5e-5, 1e-9),          # the CUDA C++ kernels (emulated or on a device): pool, BN, fusion
}
WINOGRAD_TOL32 = {"winograd": 2e-4, "winograd_2x2": 2e-4, "winograd_4x4": 2e-4}


def tol(dtype, kind="conv", algo=None):
    """The relative-error bound of a family (and, for convolutions, an algorithm) in a dtype."""
    t32, t64 = TOLERANCES[kind]
    if dtype == torch.float64:
        return t64
    if kind == "conv" and algo in WINOGRAD_TOL32:
        return WINOGRAD_TOL32[algo]
    return t32


def rel_err(actual, expected) -> float:
    """||a - e|| / ||e|| over all elements, in float64 (finite inputs)."""
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    return ((a - e).norm() / max(e.norm().item(), 1e-30)).item()


def assert_close(actual, expected, dtype, what="", kind="conv", algo=None, tol32=None, tol64=None, bound=None):
    """actual against a reference: same shape, the same non-finite values at the same positions, and
    a norm-wise relative error of the finite values within bound (default: tol(dtype, kind, algo),
    overridable per dtype by tol32 / tol64: a backend whose tests held a tighter bound keeps it)."""
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        bad = (nan_a != nan_e).nonzero()[:5].tolist()
        assert False, f"{what}: NaNs differ ({int((nan_a & ~nan_e).sum())} unexpected, " \
                      f"{int((nan_e & ~nan_a).sum())} missing; first at {bad})"
    fin = torch.isfinite(e)
    inf = ~fin & ~nan_e
    if not torch.equal(torch.isinf(a), inf) or not torch.equal(a[inf], e[inf]):
        bad = ((torch.isinf(a) != inf) | (inf & (a != e))).nonzero()[:5].tolist()
        assert False, f"{what}: infinities differ (first at {bad})"
    if not fin.any():
        return
    if bound is None:
        bound = {torch.float32: tol32, torch.float64: tol64}.get(dtype)
        if bound is None:
            bound = tol(dtype, kind, algo)
    err = rel_err(a[fin], e[fin])
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound:.3g}"


def nan_like(shape, dtype, device="cpu"):
    """An output buffer that starts as NaN, so an element a kernel does not write fails the check."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
