"""Benchmark cases: one (op, layer, algo, backend, dtype, batch) each, timed against PyTorch.

Timing protocol, per case, in one process:
  1. first call of pyconv (Numba JIT, autotuning, page faults land here; reported as "1st call")
     and of torch, on fresh state; these outputs are checked against a float64 torch reference;
  2. `warmup` more calls of each;
  3. `repeats` timed calls of each, *interleaved* (p t, t p, p t, ...) so drifts in clock speed or
     machine load hit both sides alike; the median is reported.
Peers (`peers=("nnpack",)`: torch's NNPACK for conv2d forward) join the same rotation.

Work conventions: convolutions count 2*N*K*P*Q*C/G*R*S flops per forward (whatever the algorithm
does, so GFLOP/s compare across algorithms), x3 for a training step (forward, grad-input,
grad-weight). Pooling and batch norm count the bytes a single pass must move: input read once,
output written once (plus the int64 indices for max pooling only when returned).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF
from pyconv import _args, autotune, backends
from pyconv._errors import PyConvError

from . import peers as peer_engines
from .suites import ConvLayer, Layer, PoolLayer

OPS = ("conv2d", "conv2d_train", "conv2d_infer", "max_pool2d", "avg_pool2d", "batch_norm", "conv_bn_relu")
# conv2d_infer: the inference epilogue of a fused layer, relu(conv2d + bias + residual), with the
# weights prepared once and the call bound to its kernel (pyconv.prepare, as pyconv.nn.FusedConv runs it)
CONV_OPS = ("conv2d", "conv2d_train", "conv2d_infer", "conv_bn_relu")
# the pyconv.functional function each op needs
FUNCTIONAL = {"conv2d": "conv2d", "conv2d_train": "conv2d", "conv2d_infer": "conv2d_activation",
              "max_pool2d": "max_pool2d", "avg_pool2d": "avg_pool2d", "batch_norm": "batch_norm",
              "conv_bn_relu": "conv_bn_relu"}
EPS, MOMENTUM = 1e-5, 0.1


class Case(NamedTuple):
    suite: str
    op: str
    layer: Layer
    algo: str  # "-" for ops without algorithms
    backend: str
    dtype: torch.dtype
    batch: int

    @property
    def label(self) -> str:
        a = "" if self.algo == "-" else f" {self.algo}"
        return f"{self.op} {self.layer.name} [{self.backend}{a}]"

    @property
    def id(self) -> str:
        """Stable key for baselines."""
        return "/".join([self.suite, self.layer.name, self.op, self.backend, self.algo,
                         str(self.dtype).replace("torch.", ""), f"b{self.batch}"])


class PeerTime(NamedTuple):
    name: str
    status: str  # "ok", "n/a" (the peer cannot do this case), "error"
    note: str = ""
    median: float = math.nan  # seconds
    min: float = math.nan
    err: float = math.nan  # max |out - ref| / max |ref| against float64


class Result(NamedTuple):
    case: Case
    status: str  # "ok", "skipped" (not implemented / not applicable), "error"
    note: str = ""
    shape: str = ""
    unit: str = ""  # "GFLOP/s" or "GB/s"
    work: float = 0.0  # flops or bytes per call
    t_pyconv: float = math.nan  # seconds, median of repeats
    t_torch: float = math.nan
    first_pyconv: float = math.nan  # seconds of the first call
    first_torch: float = math.nan
    err_pyconv: float = math.nan  # max |out - ref| / max |ref| over every output
    err_torch: float = math.nan
    min_pyconv: float = math.nan  # fastest repeat: on a busy machine, less hit by preemption
    min_torch: float = math.nan
    picked: str = ""  # the algorithm algo="auto" ran
    peers: Tuple[PeerTime, ...] = ()

    @property
    def rate(self) -> float:
        """GFLOP/s or GB/s of pyconv."""
        return self.work / self.t_pyconv / 1e9

    @property
    def torch_rate(self) -> float:
        return self.work / self.t_torch / 1e9

    @property
    def speed_vs_torch(self) -> float:
        """t_torch / t_pyconv: > 1 means pyconv is faster."""
        return self.t_torch / self.t_pyconv


def conv_shape(layer: ConvLayer, n: int) -> _args.ConvShape:
    p = _args.ConvParams((layer.stride,) * 2, (layer.padding,) * 4, (1, 1), layer.groups)
    return _args.conv2d_shape_of_sizes((n, layer.C, layer.H, layer.W), (layer.K, layer.C // layer.groups,
                                                                         layer.R, layer.S), p)


def unavailable(op: str, algo: str, backend: str, layer: Layer, n: int) -> Optional[Tuple[str, str]]:
    """(kind, why) when this case cannot run here, else None. kind is "unavailable" (the backend
    cannot run on this machine) or "n/a" (the backend's can_run refuses the algorithm on this shape)."""
    if backend not in pyconv.available_backends():
        why = backends.load(backend).unavailable_reason() or "not available on this machine"
        return "unavailable", f"backend {backend}: {why}"
    if op in CONV_OPS:
        try:
            autotune.resolve_conv_algo(algo, conv_shape(layer, n), backend)
        except PyConvError as e:
            return "n/a", str(e)
    return None


def _rel_err(outs, refs) -> float:
    """Largest over the outputs of max|out - ref| / max|ref| (0 where both are all zero)."""
    worst = 0.0
    for o, r in zip(outs, refs):
        if o is None or r is None:
            continue
        o = o.detach().to("cpu", torch.float64)
        scale = r.abs().max().item() if r.numel() else 0.0
        diff = (o - r).abs().max().item() if r.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


class _Bound(NamedTuple):
    """One case made concrete: callables for pyconv and torch, and a check against float64."""

    shape: str
    unit: str
    work: float
    run_pyconv: Callable[[], object]
    run_torch: Callable[[], object]
    fresh_pyconv: Callable[[], Tuple]  # first call on fresh state -> outputs to check
    fresh_torch: Callable[[], Tuple]
    reference: Callable[[], Tuple]  # float64 torch on the CPU
    conv_args: Tuple = ()  # conv2d forward: (x, w, b, stride, padding, groups), for peers


def _conv_tensors(layer: ConvLayer, n: int, dtype, device, gen):
    fan_in = layer.C // layer.groups * layer.R * layer.S
    x = torch.randn(n, layer.C, layer.H, layer.W, generator=gen, dtype=dtype).to(device)
    w = (torch.randn(layer.K, layer.C // layer.groups, layer.R, layer.S, generator=gen, dtype=dtype)
         / math.sqrt(fan_in)).to(device)
    b = torch.randn(layer.K, generator=gen, dtype=dtype).to(device)
    return x, w, b


def _bn_params(c: int, dtype, device, gen):
    weight = (1 + 0.1 * torch.randn(c, generator=gen, dtype=dtype)).to(device)
    bias = (0.1 * torch.randn(c, generator=gen, dtype=dtype)).to(device)
    rm = (0.1 * torch.randn(c, generator=gen, dtype=dtype)).to(device)
    rv = (1 + 0.1 * torch.rand(c, generator=gen, dtype=dtype)).to(device)
    return weight, bias, rm, rv


def _d(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def bind(case: Case) -> _Bound:
    """Allocates the case's data and builds its callables."""
    layer, n, dt, be, algo = case.layer, case.batch, case.dtype, case.backend, case.algo
    dev = torch.device(backends.REGISTRY[be].device)
    gen = torch.Generator().manual_seed(1234)
    op = case.op
    if op in ("conv2d", "conv2d_train", "conv2d_infer", "conv_bn_relu", "batch_norm"):
        x, w, b = _conv_tensors(layer, n, dt, dev, gen)
        st, pad, g = layer.stride, layer.padding, layer.groups
        flops = conv_shape(layer, n).flops
        desc = layer.describe(n)
    if op == "conv2d":
        def pc():
            return (PF.conv2d(x, w, b, st, pad, 1, g, algo=algo, backend=be),)

        def tc():
            return (F.conv2d(x, w, b, st, pad, 1, g),)

        return _Bound(desc, "GFLOP/s", flops, pc, tc, pc, tc,
                      lambda: (F.conv2d(_d(x), _d(w), _d(b), st, pad, 1, g),), (x, w, b, st, pad, g))
    if op == "conv2d_infer":
        r = torch.randn((n, layer.K) + layer.out_hw(), generator=gen, dtype=dt).to(dev)
        prepared = PF.prepare(w, b, st, pad, 1, g, algo=algo, backend=be)

        def pc():
            with torch.no_grad():
                return (prepared(x, r, "relu"),)

        def tc():
            with torch.no_grad():
                return (F.relu(F.conv2d(x, w, b, st, pad, 1, g) + r),)

        return _Bound(desc, "GFLOP/s", flops, pc, tc, pc, tc,
                      lambda: (F.relu(F.conv2d(_d(x), _d(w), _d(b), st, pad, 1, g) + _d(r)),))
    if op == "conv2d_train":
        gy = torch.randn((n, layer.K) + layer.out_hw(), generator=gen, dtype=dt).to(dev)
        xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))

        def step(conv, xs=xs, ws=ws, bs=bs, gy=gy):
            with torch.enable_grad():
                y = conv(xs, ws, bs)
                return (y,) + torch.autograd.grad(y, (xs, ws, bs), gy)

        def pc():
            return step(lambda x_, w_, b_: PF.conv2d(x_, w_, b_, st, pad, 1, g, algo=algo, backend=be))

        def tc():
            return step(lambda x_, w_, b_: F.conv2d(x_, w_, b_, st, pad, 1, g))

        def ref():
            xd, wd, bd = (_d(t).requires_grad_() for t in (x, w, b))
            return step(lambda x_, w_, b_: F.conv2d(x_, w_, b_, st, pad, 1, g), xd, wd, bd, _d(gy))

        return _Bound(desc, "GFLOP/s", 3 * flops, pc, tc, pc, tc, ref)
    if op in ("batch_norm", "conv_bn_relu"):
        c = layer.K
        params = _bn_params(c, dt, dev, gen)
        if op == "batch_norm":
            # the BatchNorm2d after this conv: its input is the conv's output
            x = torch.randn((n, c) + layer.out_hw(), generator=gen, dtype=dt).to(dev)
            desc = f"{n}x{c}x{layer.out_hw()[0]}x{layer.out_hw()[1]} train"

        def state():
            return [t.clone() for t in params]

        def bn_case(fn_py, fn_torch, make_ref):
            sp, st_ = state(), state()

            def fresh(fn):
                def run():
                    s = state()
                    return (fn(x, s),) + tuple(s[2:])  # output and the updated running stats
                return run

            def ref():
                s = [_d(t) for t in params]
                return (make_ref(_d(x), s),) + tuple(s[2:])

            return fresh(fn_py), fresh(fn_torch), (lambda: fn_py(x, sp)), (lambda: fn_torch(x, st_)), ref

        if op == "batch_norm":
            def py_bn(x_, s):
                return PF.batch_norm(x_, s[2], s[3], s[0], s[1], True, MOMENTUM, EPS, backend=be)

            def t_bn(x_, s):
                return F.batch_norm(x_, s[2], s[3], s[0], s[1], True, MOMENTUM, EPS)

            fp, ft, rp, rt, ref = bn_case(py_bn, t_bn, t_bn)
            return _Bound(desc, "GB/s", 2 * x.numel() * x.element_size(), rp, rt, fp, ft, ref)

        def py_cbr(x_, s):
            return PF.conv_bn_relu(x_, w, None, s[0], s[1], s[2], s[3], st, pad, 1, g, True, MOMENTUM, EPS,
                                   algo=algo, backend=be)

        def t_cbr(x_, s, w_=w):
            y = F.conv2d(x_, w_, None, st, pad, 1, g)
            return F.relu(F.batch_norm(y, s[2], s[3], s[0], s[1], True, MOMENTUM, EPS))

        fp, ft, rp, rt, ref = bn_case(py_cbr, t_cbr, lambda x_, s: t_cbr(x_, s, _d(w)))
        return _Bound(desc + " train", "GFLOP/s", flops, rp, rt, fp, ft, ref)
    # pooling
    assert isinstance(layer, PoolLayer)
    x = torch.randn(n, layer.C, layer.H, layer.W, generator=gen, dtype=dt).to(dev)
    k, s, p = layer.kernel, layer.stride, layer.padding
    if op == "max_pool2d":
        def pc():
            return (PF.max_pool2d(x, k, s, p, backend=be),)

        def tc():
            return (F.max_pool2d(x, k, s, p),)

        def ref():
            return (F.max_pool2d(_d(x), k, s, p),)
    else:
        def pc():
            return (PF.avg_pool2d(x, k, s, p, backend=be),)

        def tc():
            return (F.avg_pool2d(x, k, s, p),)

        def ref():
            return (F.avg_pool2d(_d(x), k, s, p),)
    out_numel = n * layer.C * ((layer.H + 2 * p - k) // s + 1) * ((layer.W + 2 * p - k) // s + 1)
    return _Bound(layer.describe(n), "GB/s", (x.numel() + out_numel) * x.element_size(), pc, tc, pc, tc, ref)


def _timed(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _picked(case: Case) -> str:
    """What algo="auto" runs for this case ("" when not a conv, or unknown)."""
    if case.algo != "auto" or case.op not in CONV_OPS:
        return ""
    try:
        return autotune.resolve_conv_algo("auto", conv_shape(case.layer, case.batch), case.backend, case.dtype,
                                          grad=case.op == "conv2d_train")
    except Exception:  # noqa: BLE001  (a label only: never fail a case for it)
        return ""


def _peer_callables(case: Case, bound: _Bound, peers) -> Tuple[Dict[str, Callable], List[PeerTime]]:
    """Runnable peers for this case, and the n/a ones with the reason."""
    runs, skipped = {}, []
    for name in peers:
        why = peer_engines.unavailable(name)
        fn = None
        if why is None and not bound.conv_args:
            why = f"{name} is a peer for conv2d forward only"
        if why is None:
            x, w, b, st, pad, g = bound.conv_args
            fn, why = peer_engines.nnpack_conv(x, w, b, st, pad, g, case.dtype)
        if fn is None:
            skipped.append(PeerTime(name, "n/a", why))
        else:
            runs[name] = fn
    return runs, skipped


def run_case(case: Case, repeats: int, warmup: int = 1, check: bool = True, peers=()) -> Result:
    """Runs one case; never raises for a kernel's failure (it becomes an "error" result)."""
    why = unavailable(case.op, case.algo, case.backend, case.layer, case.batch)
    if why:
        return Result(case, "skipped", f"{why[0]}: {why[1]}")
    try:
        bound = bind(case)
    except (NotImplementedError, PyConvError) as e:
        return Result(case, "skipped", f"not implemented: {e}")
    dev = torch.device(backends.REGISTRY[case.backend].device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    partial = dict(shape=bound.shape, unit=bound.unit, work=float(bound.work), picked=_picked(case))
    peer_runs, peer_results = _peer_callables(case, bound, peers)
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            out_p = bound.fresh_pyconv()
            sync()
            first_p = time.perf_counter() - t0
            t0 = time.perf_counter()
            out_t = bound.fresh_torch()
            sync()
            first_t = time.perf_counter() - t0
            err_p = err_t = math.nan
            refs = bound.reference() if check else None
            if check:
                err_p, err_t = _rel_err(out_p, refs), _rel_err(out_t, refs)
            del out_p, out_t
            peer_err = {}
            for name, fn in list(peer_runs.items()):
                try:
                    out = (fn(),)
                    peer_err[name] = _rel_err(out, refs) if check else math.nan
                except Exception as e:  # noqa: BLE001  (a peer's failure is a note, not a case error)
                    peer_results.append(PeerTime(name, "error", f"{type(e).__name__}: {e}"))
                    del peer_runs[name]
            del refs
            sides = [bound.run_pyconv, bound.run_torch] + list(peer_runs.values())
            for _ in range(warmup):
                for fn in sides:
                    fn()
            sync()
            times: List[List[float]] = [[] for _ in sides]
            for i in range(repeats):
                # rotate the order (p t, t p with two sides) so drifts hit every side alike
                k = i % len(sides)
                for j in list(range(k, len(sides))) + list(range(k)):
                    times[j].append(_timed(sides[j], sync))
    except NotImplementedError as e:
        return Result(case, "skipped", f"not implemented: {e}", **partial)
    except Exception as e:  # a failing kernel is a result to report, not a reason to stop
        return Result(case, "error", f"{type(e).__name__}: {e}", **partial)
    tp, tt = times[0], times[1]
    for name, ts in zip(peer_runs, times[2:]):
        peer_results.append(PeerTime(name, "ok", "", statistics.median(ts), min(ts), peer_err[name]))
    return Result(case, "ok", "", t_pyconv=statistics.median(tp), t_torch=statistics.median(tt),
                  min_pyconv=min(tp), min_torch=min(tt),
                  first_pyconv=first_p, first_torch=first_t, err_pyconv=err_p, err_torch=err_t,
                  peers=tuple(peer_results), **partial)


def geomean(values: List[float]) -> float:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else math.nan


def summarize(results: List[Result]) -> Dict[str, Dict[str, float]]:
    """Geomean speed vs torch per (op, backend, algo, dtype) over the ok results."""
    groups: Dict[str, List[float]] = {}
    for r in results:
        if r.status == "ok":
            c = r.case
            key = f"{c.op} {c.backend}" + ("" if c.algo == "-" else f"/{c.algo}") + \
                f" {str(c.dtype).replace('torch.', '')}"
            groups.setdefault(key, []).append(r.speed_vs_torch)
    out = {k: {"geomean_speed_vs_torch": geomean(v), "layers": len(v)} for k, v in groups.items()}
    return out
