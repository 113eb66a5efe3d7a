"""Differential fuzzing of every pyconv.functional op against torch.nn.functional.

Hypothesis draws arbitrary argument tuples, valid and invalid: odd ranks (2-D..5-D), empty sizes,
zero / negative / huge strides, paddings and dilations, mismatched channels, wrong dtypes, NaN and
Inf data, non-contiguous, channels-last and zero-stride (expand()) views. For each, torch and
pyconv must agree: both raise, or both return the same values (same shape and dtype, NaN where
torch has NaN, finite values within a bound derived from the data). pyconv's errors must be
PyConvError or TypeError, never an internal exception (IndexError, ZeroDivisionError, ...).

Deliberate differences from torch, encoded in expect_pyconv_rejects():
  * dtypes other than float32 / float64 are rejected (torch accepts e.g. float16 or int64 pooling);
  * batch_norm of an empty input: torch skips its argument checks (and can raise IndexError on
    valid ones); pyconv checks them, so only the results are compared;
  * non-positive stride or dilation is rejected even where torch lets it pass (empty batch);
  * zero input channels and empty kernels are rejected (torch returns zero-channel outputs);
  * algo='winograd*' rejects shapes Winograd F(m x m, 3 x 3) cannot run (not 3x3, strided, dilated);
Winograd's transforms mix every input of a tile, so with non-finite data a winograd output may be
NaN where torch's is not (never the reverse); its finite values are compared as usual.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import pyconv
import pyconv.functional as PF
from pyconv import PyConvError, backends
from pyconv import problem
from pyconv.problem import winograd_unsupported
from pyconv._args import ConvShape

CPP_EXAMPLES = max(60, settings.default.max_examples)
NUMBA_EXAMPLES = max(12, settings.default.max_examples // 5)
HAS_NUMBA = "numba" in pyconv.available_backends() and bool(backends.load("numba").conv_algos)
FUZZ_BACKENDS = [pytest.param("cpp", id="cpp"),
                 pytest.param("numba", id="numba",
                              marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba backend unavailable"))]

SUPPORTED = (torch.float32, torch.float64)
DTYPES = st.sampled_from([torch.float32] * 4 + [torch.float64] * 4 + [torch.float16, torch.int64, torch.int32])


def fuzz_settings(backend):
    return settings(max_examples=CPP_EXAMPLES if backend == "cpp" else NUMBA_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    derandomize=settings.default.derandomize)  # the profile's: fixed in CI, random when thorough


# ----------------------------------------------------------------------------- tensor drawing ---

@st.composite
def tensors(draw, shape, dtype, special=True):
    """A tensor of `shape` in one of several memory layouts, possibly holding NaN / Inf."""
    shape = tuple(shape)
    layout = draw(st.sampled_from(["contiguous", "contiguous", "permuted", "sliced", "expanded", "channels_last"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if layout == "expanded" and shape:
        base_shape = tuple(1 if draw(st.booleans()) else d for d in shape)
    elif layout == "sliced" and shape:
        base_shape = shape[:-1] + (2 * shape[-1],)
    elif layout == "permuted":
        base_shape = shape[::-1]
    else:
        base_shape = shape
    if dtype.is_floating_point:
        base = torch.randn(base_shape, generator=gen, dtype=torch.float64)
    else:
        base = torch.randint(-3, 4, base_shape, generator=gen, dtype=torch.int64).double()
    kind = draw(st.sampled_from(["none"] * 5 + ["nan", "inf", "-inf", "mixed"])) if special else "none"
    if kind != "none" and base.numel() and dtype.is_floating_point:
        flat = base.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, flat.numel() - 1))
            v = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(kind) or draw(
                st.sampled_from([math.nan, math.inf, -math.inf]))
            flat[i] = v
    base = base.to(dtype)
    if layout == "expanded":
        return base.expand(shape)
    if layout == "sliced" and shape:
        return base[..., ::2]
    if layout == "permuted":
        return base.permute(*reversed(range(len(shape))))
    if layout == "channels_last" and len(shape) == 4:
        return base.contiguous(memory_format=torch.channels_last)
    return base


def pairs(lo, hi):
    """An int, a 1- or 2-sequence of ints, or (rarely) a malformed value."""
    i = st.integers(lo, hi)
    return st.one_of(i, i, st.tuples(i, i), st.lists(i, min_size=1, max_size=1),
                     st.sampled_from([(1, 1, 1), 1.5, "2", None]))


# --------------------------------------------------------------------------------- comparison ---

def outcome(fn):
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001  (the point is to see every exception)
        return False, e


def check_agree(ref_fn, got_fn, compare, rejects: str = "", either: bool = False):
    """torch (ref_fn) and pyconv (got_fn) both raise, or both return results that `compare` accepts;
    `rejects` names a deliberate difference: pyconv must raise PyConvError whatever torch does;
    `either`: raising need not agree (results, where both return, must)."""
    ok_ref, ref = outcome(ref_fn)
    ok_got, got = outcome(got_fn)
    if not ok_got:
        # (an output torch cannot allocate raises torch's RuntimeError, as torch.nn.functional does)
        assert isinstance(got, (PyConvError, TypeError, MemoryError)) or "can't allocate memory" in str(got), \
            f"pyconv raised an internal error: {got!r}"
    if rejects:
        assert not ok_got, f"pyconv should reject ({rejects}), but returned"
        return
    if either and not (ok_ref and ok_got):
        return
    if not ok_ref:
        assert not ok_got, f"torch raised {ref!r} but pyconv returned"
        return
    assert ok_got, f"torch returned but pyconv raised {got!r}"
    compare(got, ref)


def assert_values(got, ref, bound, rtol, what="output", nan_superset=False):
    """got matches ref: same shape / dtype; NaN where ref is NaN; the same infinities; finite values
    within rtol * bound (bound: the same op on |data|, so it does not depend on cancellation)."""
    assert isinstance(got, torch.Tensor), f"{what}: got {type(got).__name__}"
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != torch's {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != torch's {ref.dtype}"
    nan_ref, nan_got = torch.isnan(ref), torch.isnan(got)
    assert not (nan_ref & ~nan_got).any(), f"{what}: torch has NaN where pyconv has {got[nan_ref & ~nan_got][:4]}"
    if nan_superset:
        comparable = ~nan_got
    else:
        assert not (nan_got & ~nan_ref).any(), f"{what}: pyconv has NaN where torch has {ref[nan_got & ~nan_ref][:4]}"
        comparable = ~nan_ref
    inf_ref = torch.isinf(ref) & comparable
    assert torch.equal(got[inf_ref], ref[inf_ref]), f"{what}: infinities differ"
    fin = torch.isfinite(ref) & comparable
    assert torch.isfinite(got[fin]).all(), f"{what}: pyconv non-finite where torch is finite"
    err = (got[fin].double() - ref[fin].double()).abs()
    lim = rtol * (bound[fin].double() + 1e-30) if bound is not None else rtol
    bad = err > lim
    assert not bad.any(), f"{what}: |error| {err[bad][:4].tolist()} over {lim[bad][:4].tolist() if bound is not None else lim}"


def rtol_of(dtype, algo="direct"):
    if dtype == torch.float64:
        return 1e-10 if not algo.startswith("winograd") else 1e-8
    return 1e-5 if not algo.startswith("winograd") else 2e-4


def finite_abs(t):
    return torch.nan_to_num(t.double(), nan=0.0, posinf=0.0, neginf=0.0).abs() if t is not None else None


def supported(*ts):
    return all(t is None or t.dtype in SUPPORTED for t in ts)


def has_nonfinite(*ts):
    return any(t is not None and t.dtype.is_floating_point and not torch.isfinite(t).all() for t in ts)


# -------------------------------------------------------------------------------------- conv2d ---

CONV_ALGOS = list(problem.ALGOS)


@st.composite
def conv_cases(draw):
    dtype = draw(DTYPES)
    wdtype = dtype if draw(st.integers(0, 9)) else draw(DTYPES)
    rank = draw(st.sampled_from([4, 4, 4, 3, 3, 5, 2]))
    groups = draw(st.sampled_from([1, 1, 1, 2, 3, 0, -1]))
    gpos = max(groups, 1)
    C = gpos * draw(st.integers(1, 3)) + (draw(st.sampled_from([0] * 8 + [1, -1])))
    C = max(C, 0)
    K = gpos * draw(st.integers(0, 3)) + (1 if draw(st.integers(0, 19)) == 0 else 0)
    Cg = C // gpos if draw(st.integers(0, 9)) else draw(st.integers(1, 4))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if draw(st.integers(0, 29)) == 0:
        R = 0
    N = draw(st.sampled_from([1, 2, 2, 3, 0]))
    H, W = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    xshape = {4: (N, C, H, W), 3: (C, H, W), 5: (N, C, 1, H, W), 2: (C, H)}[rank]
    x = draw(tensors(xshape, dtype))
    wshape = (K, Cg, R, S) if draw(st.integers(0, 19)) else (K, Cg, R)
    w = draw(tensors(wshape, wdtype, special=draw(st.integers(0, 4)) == 0))
    b = None
    if draw(st.booleans()):
        blen = K if draw(st.integers(0, 14)) else K + 1
        b = draw(tensors((blen,), wdtype, special=False))
    padding = draw(st.one_of(pairs(0, 3), st.sampled_from(["same", "valid", "full", -1, 10**6, 2**40])))
    stride = draw(st.one_of(pairs(1, 3), st.sampled_from([0, -1, (1, 0), 10**6])))
    dilation = draw(st.one_of(pairs(1, 3), st.sampled_from([0, -2])))
    algo = draw(st.sampled_from(CONV_ALGOS))
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), algo


def conv_rejects(x, w, b, kw, algo):
    """A deliberate difference from torch, or '' (only meaningful when torch accepts the call)."""
    if not supported(x, w, b):
        return "integer / half dtypes are not supported"
    if x.dim() in (3, 4) and x.shape[-3] == 0:
        return "zero input channels are rejected (torch returns a zero-channel output)"
    if w.dim() == 4 and 0 in w.shape[2:]:
        return "an empty kernel is rejected"
    for name in ("stride", "dilation"):
        v = pair_or_none(kw[name])
        if v is not None and min(v) <= 0:
            return f"non-positive {name} is rejected"
    if algo.startswith("winograd") and x.dim() in (3, 4) and w.dim() == 4:
        try:
            shape = ConvShape(*([0] * 10 + list(pair_or_none(kw["stride"]) or (1, 1)) + [0, 0]
                                + list(pair_or_none(kw["dilation"]) or (1, 1))))
        except Exception:  # noqa: BLE001
            return ""
        shape = shape._replace(R=w.shape[2], S=w.shape[3])
        if winograd_unsupported(shape):
            return "winograd needs a 3x3 kernel, stride 1 and dilation 1"
    return ""


def pair_or_none(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(isinstance(i, int) for i in v):
        return (v[0], v[-1])
    return None


def conv_bound(x, w, b, kw):
    """conv2d(|x|, |w|) + |b|: an upper bound of every term's magnitude in each output."""
    return F.conv2d(finite_abs(x), finite_abs(w), finite_abs(b), **kw)


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_conv2d(backend):
    @fuzz_settings(backend)
    @given(case=conv_cases())
    def run(case):
        x, w, b, kw, algo = case

        def compare(got, ref):
            nonfin = has_nonfinite(x, w, b)
            assert_values(got, ref, conv_bound(x, w, b, kw), 20 * rtol_of(x.dtype, algo) * max(1, w.shape[1]),
                          nan_superset=algo.startswith("winograd") and nonfin)
            if x.dtype == torch.float64 and not nonfin and ref.numel() and algo != "auto":
                check_conv_grads(x, w, b, kw, algo, backend)

        check_agree(lambda: F.conv2d(x, w, b, **kw), lambda: PF.conv2d(x, w, b, **kw, algo=algo, backend=backend),
                    compare, conv_rejects(x, w, b, kw, algo))

    run()


def check_conv_grads(x, w, b, kw, algo, backend):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    bb = (lambda ts: ts[2] if b is not None else None)
    y = PF.conv2d(leaves[0], leaves[1], bb(leaves), **kw, algo=algo, backend=backend)
    yr = F.conv2d(refs[0], refs[1], bb(refs), **kw)
    gy = torch.randn_like(yr)
    got = torch.autograd.grad(y, leaves, gy)
    want = torch.autograd.grad(yr, refs, gy)
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), got, want):
        err = (g - r).norm() / max(r.norm().item(), 1e-30)
        assert err <= 1e-8, f"{backend}/{algo} {name}: relative error {err:.3g}"


# ------------------------------------------------------------------------------------- pooling ---

@st.composite
def pool_cases(draw):
    dtype = draw(DTYPES)
    rank = draw(st.sampled_from([4, 4, 4, 3, 3, 5, 2]))
    N, C = draw(st.sampled_from([1, 2, 0])), draw(st.sampled_from([1, 2, 3, 0]))
    H, W = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    xshape = {4: (N, C, H, W), 3: (C, H, W), 5: (N, C, 1, H, W), 2: (C, H)}[rank]
    x = draw(tensors(xshape, dtype))
    kernel = draw(st.one_of(pairs(1, 4), st.sampled_from([0, -1])))
    stride = draw(st.one_of(st.none(), pairs(1, 3), st.sampled_from([0, -1, [], 10**6])))
    padding = draw(st.one_of(pairs(0, 2), st.sampled_from([-1, 10**6])))
    return x, kernel, stride, padding, draw(st.booleans())


def pool_rejects(x, max_pool_kw=None):
    if not supported(x):
        return "integer / half dtypes are not supported"
    if max_pool_kw is not None and max_pool_has_empty_window(x, max_pool_kw):
        return "a max_pool2d window holding no input element (torch returns -inf and an out-of-plane index)"
    return ""


def max_pool_has_empty_window(x, kw):
    """Whether torch's max_pool2d output has a window whose taps all fall in the padding; worked out
    from the output torch returns (no pyconv code); False when torch raises."""
    try:
        out = F.max_pool2d(x, **{**kw, "return_indices": False})
    except Exception:  # noqa: BLE001
        return False
    k, s, p, d = (pair_or_none(kw[n]) for n in ("kernel_size", "stride", "padding", "dilation"))
    s = s or k
    if None in (k, s, p, d):
        return False
    for axis in (0, 1):
        size, n_out = x.shape[-2 + axis], out.shape[-2 + axis]
        for o in range(n_out):
            if not any(0 <= o * s[axis] - p[axis] + j * d[axis] < size for j in range(k[axis])):
                return True
    return False


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_max_pool2d(backend):
    @fuzz_settings(backend)
    @given(case=pool_cases(), dilation=st.one_of(pairs(1, 3), st.just(0)), indices=st.booleans())
    def run(case, dilation, indices):
        x, kernel, stride, padding, ceil_mode = case
        kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                  return_indices=indices)

        def compare(got, ref):
            if indices:
                (got, gi), (ref, ri) = got, ref
                assert gi.dtype == torch.int64 and gi.shape == ri.shape
                if not torch.isnan(x).any():  # torch's index of a NaN window is not specified
                    assert torch.equal(gi, ri), "max_pool2d: indices differ"
            assert_values(got, ref, None, 0.0, "max_pool2d")  # max is exact

        check_agree(lambda: F.max_pool2d(x, **kw), lambda: PF.max_pool2d(x, **kw, backend=backend), compare,
                    pool_rejects(x, kw))

    run()


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_avg_pool2d(backend):
    @fuzz_settings(backend)
    @given(case=pool_cases(), count_include_pad=st.booleans(),
           divisor=st.sampled_from([None, None, None, 1, 3, 0, -2]))
    def run(case, count_include_pad, divisor):
        x, kernel, stride, padding, ceil_mode = case
        kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, divisor_override=divisor)

        def compare(got, ref):
            bound = F.avg_pool2d(finite_abs(x), **kw).abs()  # (a negative divisor_override flips the sign)
            assert_values(got, ref, bound, 8 * rtol_of(x.dtype), "avg_pool2d")

        check_agree(lambda: F.avg_pool2d(x, **kw), lambda: PF.avg_pool2d(x, **kw, backend=backend), compare,
                    pool_rejects(x))

    run()


# ---------------------------------------------------------------------------------- batch norm ---

@st.composite
def bn_cases(draw):
    dtype = draw(DTYPES)
    rank = draw(st.sampled_from([4, 4, 4, 2, 3, 5, 1]))
    N, C = draw(st.sampled_from([1, 2, 3, 0])), draw(st.integers(0, 3))
    sp = [draw(st.integers(0, 4)) for _ in range(max(rank - 2, 0))]
    xshape = ((N, C) + tuple(sp)) if rank >= 2 else (C,)
    x = draw(tensors(xshape, dtype))

    def param(default_none):
        if draw(st.integers(0, 3)) == 0 if default_none else draw(st.integers(0, 5)) != 0:
            n = C if draw(st.integers(0, 14)) else C + 1
            pdt = dtype if draw(st.integers(0, 14)) else draw(DTYPES)
            return draw(tensors((n,), pdt, special=False))
        return None

    weight, bias = param(False), param(False)
    rm, rv = param(False), param(False)
    if rv is not None:
        rv = rv.abs() + 0.5 if rv.dtype.is_floating_point else rv.abs() + 1
        rv = rv.clone()
    rm = rm.clone() if rm is not None else None  # updated in place: never an expanded view
    training = draw(st.booleans())
    momentum = draw(st.sampled_from([0.1, 0.0, 1.0, 0.5]))
    eps = draw(st.sampled_from([1e-5, 1e-5, 1e-3, 0.5, -1.0]))
    return x, rm, rv, weight, bias, training, momentum, eps


def bn_rejects(x, rm, rv, w, b, eps):
    if not supported(x, rm, rv, w, b):
        return "integer / half dtypes are not supported"
    return ""


def bn_rtol(dtype):
    return 1e-3 if dtype == torch.float32 else 1e-9


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_batch_norm(backend):
    @fuzz_settings(backend)
    @given(case=bn_cases())
    def run(case):
        x, rm, rv, w, b, training, momentum, eps = case
        clones = lambda: [None if t is None else t.clone() for t in (rm, rv)]  # noqa: E731
        (rm_ref, rv_ref), (rm_got, rv_got) = clones(), clones()

        def compare(got, ref):
            scale = 1.0 + (finite_abs(w).max().item() if w is not None and w.numel() else 1.0) \
                + (finite_abs(b).max().item() if b is not None and b.numel() else 0.0)
            if not training:
                scale *= 1 + (finite_abs(x).max().item() if x.numel() else 0) + (finite_abs(rm).max().item()
                                                                                  if rm is not None and rm.numel()
                                                                                  else 0)
            assert_values(got, ref, None, bn_rtol(x.dtype) * scale, "batch_norm")
            for name, g, r in (("running_mean", rm_got, rm_ref), ("running_var", rv_got, rv_ref)):
                if r is not None:
                    assert_values(g, r, None, bn_rtol(x.dtype) * (1 + finite_abs(r).max().item()
                                                                   if r.numel() else 1), name)

        check_agree(lambda: F.batch_norm(x, rm_ref, rv_ref, w, b, training, momentum, eps),
                    lambda: PF.batch_norm(x, rm_got, rv_got, w, b, training, momentum, eps, backend=backend),
                    compare, bn_rejects(x, rm, rv, w, b, eps), either=x.numel() == 0)

    run()


# -------------------------------------------------------------------------------- conv_bn_relu ---

@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_conv_bn_relu(backend):
    @fuzz_settings(backend)
    @given(case=conv_cases(), training=st.booleans(), eps=st.sampled_from([1e-5, 1e-3, -1.0]),
           momentum=st.sampled_from([0.1, 1.0]), seed=st.integers(0, 2**31 - 1))
    def run(case, training, eps, momentum, seed):
        x, w, b, kw, algo = case
        gen = torch.Generator().manual_seed(seed)
        K = w.shape[0] if w.dim() >= 1 else 0
        dt = w.dtype if w.dtype.is_floating_point else torch.float32
        bn_w, bn_b, rm = (torch.randn(K, generator=gen, dtype=torch.float64).to(dt) for _ in range(3))
        rv = (torch.rand(K, generator=gen, dtype=torch.float64) + 0.5).to(dt)
        (rm_ref, rv_ref), (rm_got, rv_got) = (rm.clone(), rv.clone()), (rm.clone(), rv.clone())

        def ref_fn():
            y = F.conv2d(x, w, b, **kw)
            if y.dim() == 3:  # unbatched: one image, normalized over its (C, P, Q) channels
                return F.relu(F.batch_norm(y[None], rm_ref, rv_ref, bn_w, bn_b, training, momentum, eps))[0]
            return F.relu(F.batch_norm(y, rm_ref, rv_ref, bn_w, bn_b, training, momentum, eps))

        def compare(got, ref):
            nonfin = has_nonfinite(x, w, b)
            # normalized values: an absolute bound scaled by the affine parameters and the conv's range
            y = F.conv2d(x, w, b, **kw)
            rtol = 100 * rtol_of(x.dtype, algo) * max(1, w.shape[1])
            scale = 1 + bn_w.abs().max().item() + bn_b.abs().max().item() if K else 1
            if not training and ref.numel():
                scale *= 1 + (finite_abs(conv_bound(x, w, b, kw)).max().item() + rm.abs().max().item()) \
                    / rv.min().item() ** 0.5
            assert_values(got, ref, None, rtol * scale, "conv_bn_relu", nan_superset=nonfin)
            if training and (y.dim() == 3 or y.shape[0] > 0) and not nonfin:
                for name, g, r in (("running_mean", rm_got, rm_ref), ("running_var", rv_got, rv_ref)):
                    assert_values(g, r, None, rtol * (1 + finite_abs(conv_bound(x, w, b, kw)).max().item()) ** 2,
                                  name)

        rejects = conv_rejects(x, w, b, kw, algo)
        check_agree(ref_fn, lambda: PF.conv_bn_relu(x, w, b, bn_w, bn_b, rm_got, rv_got, kw["stride"], kw["padding"],
                                                    kw["dilation"], kw["groups"], training, momentum, eps,
                                                    algo=algo, backend=backend),
                    compare, rejects)

    run()
