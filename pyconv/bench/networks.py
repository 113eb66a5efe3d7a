"""Whole networks: a model converted with pyconv.convert against the torch original, and peers.

One row is (model, mode, batch). Modes:
  infer1  inference, batch 1     (eval(), under torch.inference_mode)
  inferN  inference, batch N
  train   training step, batch N (forward, cross-entropy, backward, SGD step)

Every side (torch, pyconv, each peer) gets its own deep copy of one seeded model, so all start
from the same weights. Per row: each side's first call is timed apart (pyconv prepares weights
and picks algorithms there; a peer's export or compile is its "setup") and its result is checked
(below); then `warmup` untimed calls each; then `repeats` rounds in which every side runs
once, the order rotating each round, so load changes on a shared machine hit all sides alike.
Medians and minimums are reported.

Checks, before any timing:
- inference: max|out - torch| / max|torch| <= 1e-3 against torch's float32 output;
- training step: loss and parameter gradients (relative L2 error over all gradients, matched by
  parameter identity) against the same step in float64. float32 gradients of a deep, freshly
  initialized net are far from exact even in torch (ResNet-50, batch 8: torch's own are 1.9e-2
  from float64), so a side fails when its error exceeds 10x torch's own (at least 1e-2): a wrong
  gradient is off by O(1). The floor is not lower because one ReLU whose input lies within float32
  rounding of zero flips its mask, which moves its channel's batch-norm bias gradient by about
  1/sqrt(N*P*Q) of it and, through batch norm's backward, every gradient below: CIFAR ResNet-20 at
  batch 8, 2.4e-3 from float64 for a side whose float64 step matches torch's to 2e-14, where torch's
  own float32 step flipped nothing (9e-7).
"""
from __future__ import annotations

import copy
import gc
import math
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import pyconv

from . import models, peers

MODES = ("infer1", "inferN", "train")
INFER_TOL = 1e-3
TRAIN_FACTOR, TRAIN_FLOOR = 10.0, 1e-2  # training: error vs float64 <= max(10 x torch's own, 1e-2)
LOSS_FLOOR = 1e-5
LR, MOMENTUM = 1e-3, 0.9


def mode_label(mode: str, batch: int) -> str:
    return {"infer1": "inference b1", "inferN": f"inference b{batch}", "train": f"training step b{batch}"}[mode]


class NetCase(NamedTuple):
    model: str
    mode: str
    batch: int  # the batch this row runs at (1 for infer1)

    @property
    def id(self) -> str:
        """Stable key for baselines."""
        return f"models/{self.model}/{self.mode}/b{self.batch}"

    @property
    def label(self) -> str:
        return f"{self.model} {mode_label(self.mode, self.batch)}"


class SideTiming(NamedTuple):
    name: str  # "torch", "pyconv", "onnxruntime", "compile"
    status: str  # "ok", "skipped", "error"
    note: str = ""
    median: float = math.nan  # seconds
    min: float = math.nan
    first: float = math.nan  # first call (pyconv, torch) or setup: export/compile (peers)
    err: float = math.nan  # inference: output vs torch's; training: gradients vs float64 (torch's own too)
    loss_err: float = math.nan  # training only: loss vs float64


class NetResult(NamedTuple):
    case: NetCase
    status: str  # "ok" or "error" (pyconv failed or disagreed with torch), "skipped"
    note: str
    sides: Dict[str, SideTiming]

    def ms(self, side: str, stat: str = "median") -> float:
        s = self.sides.get(side)
        return getattr(s, stat) * 1e3 if s is not None and s.status == "ok" else math.nan

    def speed(self, side: str, over: str = "torch", stat: str = "median") -> float:
        """time(over) / time(side): above 1, `side` is faster than `over`."""
        return self.ms(over, stat) / self.ms(side, stat)


def cases_for(model_names: Sequence[str], modes: Sequence[str], batch: int) -> List[NetCase]:
    return [NetCase(m, mode, 1 if mode == "infer1" else batch) for m in model_names for mode in modes]


# ------------------------------------------------------------------------------------ sides ---

class _Side(NamedTuple):
    """One engine made concrete for one row: `first()` runs the first call and returns what the
    check compares (output, or (loss, {param name: grad})); `run()` is the timed call."""
    name: str
    first: Callable[[], object]
    run: Callable[[], object]
    setup_s: float = 0.0  # export / compile outside the first call


def _named_params(model: torch.nn.Module) -> Dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _train_fns(model: torch.nn.Module, names: Dict[int, str], x, y, call=None):
    """first/run for a training step; `call` runs the forward (model itself, or a compiled one)."""
    call = model if call is None else call  # (not `or`: a module's truth value asks its len())
    model.train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(call(x), y)
        loss.backward()
        opt.step()
        return loss

    def first():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same dropout masks on every side
            loss = step()
        return loss.detach(), {names[id(p)]: p.grad for p in params if p.grad is not None}

    return first, step


def _infer_fns(call, x):
    def run():
        with torch.inference_mode():
            return call(x)

    return run, run


def _make_side(name: str, base: torch.nn.Module, mode: str, x, y, threads: int) -> _Side:
    model = copy.deepcopy(base)
    names = _named_params(model)  # before convert: pyconv keeps the same parameter tensors
    if name == "pyconv":
        model = pyconv.convert(model)
    if name in ("torch", "pyconv"):
        if mode == "train":
            return _Side(name, *_train_fns(model, names, x, y))
        model.eval()
        return _Side(name, *_infer_fns(model, x))
    if name == "compile":
        fn = peers.compiled(model)
        if mode == "train":
            return _Side(name, *_train_fns(model, names, x, y, call=fn))
        model.eval()
        return _Side(name, *_infer_fns(fn, x))
    if name == "onnxruntime":
        model.eval()
        run_np, setup = peers.onnxruntime_session(model, x, threads)
        x_np = x.numpy()
        return _Side(name, lambda: torch.from_numpy(run_np(x_np)), lambda: run_np(x_np), setup)
    raise KeyError(name)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (a - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _errors(mode: str, got, ref) -> Tuple[float, float]:
    """(output or gradient error, loss error) of one side's first result against the reference."""
    if mode != "train":
        return _rel(got, ref), math.nan
    (loss, grads), (loss_ref, grads_ref) = got, ref
    missing = sorted(set(grads_ref) - set(grads))
    if missing:
        raise ValueError(f"no gradient for {len(missing)} parameter(s), e.g. {missing[0]}")
    num = sum(float((grads[k].double() - g.double()).pow(2).sum()) for k, g in grads_ref.items())
    den = sum(float(g.double().pow(2).sum()) for g in grads_ref.values())
    return (math.sqrt(num / den) if den > 0 else math.sqrt(num)), _rel(loss, loss_ref)


def _failure(mode: str, err: float, loss_err: float, torch_side: "SideTiming") -> Optional[str]:
    """Why a side's error is too large, or None."""
    if mode != "train":
        return None if err <= INFER_TOL else f"output differs from torch: rel err {err:.2e} > {INFER_TOL:g}"
    limit = max(TRAIN_FACTOR * torch_side.err, TRAIN_FLOOR)
    loss_limit = max(TRAIN_FACTOR * torch_side.loss_err, LOSS_FLOOR)
    if err <= limit and loss_err <= loss_limit:
        return None
    return (f"training step disagrees with float64: gradients rel L2 err {err:.2e} (limit {limit:.1e}; torch's own "
            f"{torch_side.err:.1e}), loss rel err {loss_err:.1e} (limit {loss_limit:.0e})")


def _float64_step(base: torch.nn.Module, x, y):
    """The reference for a training step: the same step on a float64 copy."""
    model = copy.deepcopy(base).double()
    first, _ = _train_fns(model, _named_params(model), x.double(), y)
    loss, grads = first()
    return loss, {k: g.clone() for k, g in grads.items()}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------- run ---

def inputs(model: str, batch: int, seed: int = 1):
    spec = models.get_model_spec(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *spec.input_hw, generator=g)
    y = torch.randint(0, spec.num_classes, (batch,), generator=g)
    return x, y


def run_case(case: NetCase, repeats: int, warmup: int = 1, threads: int = 1,
             peer_names: Sequence[str] = (), base: Optional[torch.nn.Module] = None) -> NetResult:
    """Times one row. Never raises for pyconv's or a peer's failure: they become error cells."""
    base = base if base is not None else models.build(case.model)
    x, y = inputs(case.model, case.batch)
    sides: Dict[str, SideTiming] = {}
    live: List[_Side] = []
    ref = None
    for name in ("torch", "pyconv") + tuple(peer_names):
        if name == "onnxruntime" and case.mode == "train":
            sides[name] = SideTiming(name, "skipped", "inference only")
            continue
        why = peers.unavailable(name) if name in peers.PEERS else None
        if why:
            sides[name] = SideTiming(name, "skipped", why)
            continue
        try:
            side = _make_side(name, base, case.mode, x, y, threads)
            t0 = time.perf_counter()
            out = side.first()
            first = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001  (a failing engine is a result, not a crash)
            if name == "torch":
                raise
            # torch.compile failing in dynamo/inductor (no compiler, an unsupported op) is a skip
            toolchain = name == "compile" and type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))
            status = "skipped" if toolchain else "error"
            sides[name] = SideTiming(name, status, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        if name == "torch":  # the reference: torch's output, or a float64 training step
            ref = _float64_step(base, x, y) if case.mode == "train" else out
        try:
            err, loss_err = _errors(case.mode, out, ref)
        except ValueError as e:
            sides[name] = SideTiming(name, "error", str(e))
            continue
        why = None if name == "torch" else _failure(case.mode, err, loss_err, sides["torch"])
        if why:
            sides[name] = SideTiming(name, "error", why, err=err, loss_err=loss_err)
            continue
        # setup (export/compile) plus the first call; pyconv and torch have no setup
        sides[name] = SideTiming(name, "ok", first=side.setup_s + first, err=err, loss_err=loss_err)
        live.append(side)
        del out
    del ref
    times: Dict[str, List[float]] = {s.name: [] for s in live}
    for _ in range(warmup):
        for s in live:
            s.run()
    for i in range(repeats):
        k = i % len(live)
        for s in live[k:] + live[:k]:  # rotate who goes first
            times[s.name].append(_timed(s.run))
    for s in live:
        sides[s.name] = sides[s.name]._replace(median=statistics.median(times[s.name]), min=min(times[s.name]))
    py = sides["pyconv"]
    status = "ok" if py.status == "ok" else ("error" if py.status == "error" else "skipped")
    del live
    gc.collect()  # the big models' copies (VGG-16: 0.5 GB each) go before the next row
    return NetResult(case, status, py.note, sides)
