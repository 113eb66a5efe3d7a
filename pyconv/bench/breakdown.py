"""Where a converted network's time goes: per-layer forward and backward times, pyconv against
torch, sorted by time lost (pyconv's time minus torch's).

Timing: every leaf layer (a torch.nn or pyconv.nn module that is not a container) gets a forward
pre-hook and hook; a layer called inside another one (a fused module calling the conv it wraps)
counts as part of the outer call. In training, each call's autograd nodes (those between its
output and its inputs, weights' accumulation excluded) get hooks too, so its backward time is
the time the engine spends in them. Both models carry the same hooks (a few us a layer).

Matching the two models' calls does not rely on how pyconv.convert names what it builds: a call
stands for the torch layers whose parameters it uses (a fused conv-BN holds or refers to the
original Conv2d and BatchNorm2d); a parameterless call (pooling, a ReLU left alone) matches the
torch call of the same name; a torch activation pyconv fused away joins the latest fused call
that ran after the layers it follows.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyconv

from . import networks

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def leaf_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The modules that do one layer's work: torch.nn / pyconv.nn layers, not containers; user
    blocks (BasicBlock, GraphModule) are descended into."""
    out: List[Tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module):
        mod = type(m).__module__
        # fx's GraphModule rebuilds the module path with bare nn.Module instances: descend those
        layer = mod.startswith("pyconv.nn") or (mod.startswith("torch.nn.modules") and type(m) is not nn.Module
                                                and not isinstance(m, _CONTAINERS))
        if layer or (prefix and not any(True for _ in m.children())):
            out.append((prefix, m))
            return
        for name, child in m.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def param_owners(model: nn.Module) -> Dict[int, str]:
    """id(parameter) -> name of the module that registers it."""
    return {id(p): name for name, m in model.named_modules() for p in m.parameters(recurse=False)}


def _uses(m: nn.Module, owners: Dict[int, str]) -> FrozenSet[str]:
    """The original modules whose parameters `m` uses: its own, and those of modules it refers to
    without registering them (pyconv's fused layers keep the model's Conv2d/BatchNorm2d in place)."""
    params = list(m.parameters())
    for v in vars(m).values():
        if isinstance(v, nn.Module):
            params += list(v.parameters())
    return frozenset(owners[id(p)] for p in params if id(p) in owners)


class Call(NamedTuple):
    name: str
    kind: str  # the module's class name
    shape: str  # input shape
    fwd: float  # seconds
    bwd: float  # seconds (nan when no backward ran)
    owners: FrozenSet[str] = frozenset()  # the original modules whose parameters it used


def _graph_nodes(outputs, stops) -> list:
    """The autograd nodes a call created: from its outputs' grad_fn back to its inputs'."""
    todo = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen, nodes = set(), []
    while todo:
        n = todo.pop()
        if n is None or n in stops or n in seen or type(n).__name__ == "AccumulateGrad":
            continue
        seen.add(n)
        nodes.append(n)
        todo += [f for f, _ in n.next_functions]
    return nodes


class _Recorder:
    """Hooks on a model's leaf layers recording one Call per outermost layer call, in call order."""

    def __init__(self, model: nn.Module, owners: Dict[int, str]):
        self.calls: List[dict] = []
        self._depth = 0
        self._open: Optional[dict] = None
        self._claimed: set = set()  # autograd nodes already given to a call (never count one twice)
        self._handles = []
        for name, m in leaf_layers(model):
            self._handles.append(m.register_forward_pre_hook(self._pre(name, _uses(m, owners))))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, name, uses):
        def hook(mod, args):
            self._depth += 1
            if self._depth > 1:  # inside another layer's call: part of it
                return
            shape = "x".join(map(str, args[0].shape)) if args and isinstance(args[0], torch.Tensor) else ""
            # the inputs' nodes, taken now: an in-place layer gives its input a new grad_fn
            stops = {a.grad_fn for a in args if isinstance(a, torch.Tensor) and a.grad_fn is not None}
            self._open = {"name": name, "kind": type(mod).__name__, "shape": shape, "owners": uses,
                          "bwd": math.nan, "stops": stops, "t0": time.perf_counter()}
            self.calls.append(self._open)
        return hook

    def _post(self, mod, args, out):
        t1 = time.perf_counter()
        self._depth -= 1
        if self._depth:
            return
        rec = self._open
        rec["fwd"] = t1 - rec["t0"]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        nodes = [n for n in _graph_nodes(outs, rec.pop("stops")) if n not in self._claimed]
        self._claimed.update(nodes)
        if nodes:  # the engine runs a CPU graph's nodes one at a time: their times add up
            rec["bwd"] = 0.0

            def pre(grad_outputs, rec=rec):
                rec["b0"] = time.perf_counter()

            def post(grad_inputs, grad_outputs, rec=rec):
                rec["bwd"] += time.perf_counter() - rec["b0"]

            for n in nodes:
                n.register_prehook(pre)
                n.register_hook(post)

    def take(self) -> List[Call]:
        calls = [Call(c["name"], c["kind"], c["shape"], c.get("fwd", math.nan), c["bwd"], c["owners"])
                 for c in self.calls]
        self.calls, self._depth, self._claimed = [], 0, set()
        return calls

    def remove(self):
        for h in self._handles:
            h.remove()


class Row(NamedTuple):
    layer: str
    kind: str
    shape: str
    torch_fwd: float  # ms, medians over repeats (nan: that side has no such layer)
    pyconv_fwd: float
    torch_bwd: float
    pyconv_bwd: float

    @staticmethod
    def _d(a: float, b: float) -> float:
        return (0.0 if math.isnan(a) else a) - (0.0 if math.isnan(b) else b)

    @property
    def lost_fwd(self) -> float:
        return self._d(self.pyconv_fwd, self.torch_fwd)

    @property
    def lost_bwd(self) -> float:
        return self._d(self.pyconv_bwd, self.torch_bwd)

    @property
    def lost(self) -> float:
        return self.lost_fwd + self.lost_bwd

    @property
    def loses_in(self) -> str:
        if self.lost <= 0:
            return "-"
        if self.lost_fwd > 0 and self.lost_bwd > 0:
            return "both" if min(self.lost_fwd, self.lost_bwd) > 0.25 * self.lost else \
                ("forward" if self.lost_fwd > self.lost_bwd else "backward")
        return "forward" if self.lost_fwd > 0 else "backward"


def _align(pc: List[Call], tc: List[Call]) -> List[Tuple[List[int], List[int]]]:
    """Groups (pyconv call indices, torch call indices) covering both call lists."""
    used = [False] * len(tc)

    def first_unused(pred, start=0):
        for k in list(range(start, len(tc))) + list(range(start)):
            if not used[k] and pred(tc[k]):
                return k
        return None

    groups: List[Tuple[List[int], List[int]]] = []
    cursor = 0
    for i, p in enumerate(pc):
        if p.owners:  # the torch layers whose parameters this call used (first unused call of each)
            ks = sorted(k for k in (first_unused(lambda t, o=o: o in t.owners) for o in p.owners) if k is not None)
        else:  # the same layer by name, the next one in call order
            k = first_unused(lambda t: t.name == p.name and not t.owners, cursor)
            ks = [] if k is None else [k]
        for k in ks:
            used[k] = True
        cursor = max(ks) + 1 if ks else cursor
        groups.append(([i], ks))
    for k in [k for k in range(len(tc)) if not used[k]]:
        # a parameterless torch layer pyconv fused away (a ReLU after BN, after a residual add)
        # joins the latest pyconv call whose torch layers all ran before it
        before = [g for g in groups if g[0] and g[1] and max(g[1]) < k and not tc[k].owners]
        if before:
            max(before, key=lambda g: g[0][0])[1].append(k)
        else:
            groups.append(([], [k]))
    return groups


def _label(names: List[str]) -> str:
    """layer1.0.conv1 + layer1.0.bn1 + layer1.0.relu -> layer1.0.conv1+bn1+relu"""
    if not names:
        return ""
    return names[0] + "".join("+" + n.rsplit(".", 1)[-1] for n in names[1:])


def _median(values: List[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return statistics.median(v) * 1e3 if v else math.nan


class Breakdown(NamedTuple):
    model: str
    mode: str  # "train" or "infer"
    batch: int
    rows: List[Row]
    torch_total: float  # ms, median whole pass(es) with hooks
    pyconv_total: float

    @property
    def lost_outside(self) -> float:
        """ms lost outside the leaf layers (residual adds, loss, weight-gradient accumulation)."""
        inside = sum(r.lost for r in self.rows)
        return (self.pyconv_total - self.torch_total) - inside


def run(model_name: str, mode: str = "train", batch: int = 8, repeats: int = 3, warmup: int = 1) -> Breakdown:
    """Per-layer times of `model_name` converted by pyconv and torch's original, interleaved."""
    base = networks.models.build(model_name)
    x, y = networks.inputs(model_name, batch)
    t_model = copy.deepcopy(base)
    p_model = copy.deepcopy(base)
    p_owners = param_owners(p_model)  # before convert: pyconv keeps the parameter tensors
    p_model = pyconv.convert(p_model)
    train = mode == "train"
    for m in (t_model, p_model):
        m.train(train)
    recs = {"torch": _Recorder(t_model, param_owners(t_model)), "pyconv": _Recorder(p_model, p_owners)}
    mods = {"torch": t_model, "pyconv": p_model}

    def once(side: str) -> float:
        m = mods[side]
        t0 = time.perf_counter()
        if train:
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
        else:
            with torch.inference_mode():
                m(x)
        return time.perf_counter() - t0

    per: Dict[str, List[List[Call]]] = {"torch": [], "pyconv": []}
    totals: Dict[str, List[float]] = {"torch": [], "pyconv": []}
    try:
        for i in range(warmup + repeats):
            order = ("pyconv", "torch") if i % 2 == 0 else ("torch", "pyconv")
            for side in order:
                t = once(side)
                calls = recs[side].take()
                if i >= warmup:
                    per[side].append(calls)
                    totals[side].append(t)
    finally:
        for r in recs.values():
            r.remove()
    pc, tc = per["pyconv"][0], per["torch"][0]
    rows = []
    for pi, ti in _align(pc, tc):
        def med(side, idx, field):
            if not idx:
                return math.nan
            # a unit's time in one repeat is the sum over its calls (those that ran that pass);
            # then the median over repeats
            vals = [[getattr(rep[k], field) for k in idx] for rep in per[side]]
            return _median([sum(v for v in vs if not math.isnan(v)) if any(not math.isnan(v) for v in vs)
                            else math.nan for vs in vals])

        ti = sorted(ti)
        names = [tc[k].name for k in ti] or [pc[k].name for k in pi]
        kinds = [tc[k].kind for k in ti] or [pc[k].kind for k in pi]
        shape = (tc[ti[0]] if ti else pc[pi[0]]).shape
        rows.append(Row(_label(names), "+".join(kinds), shape, med("torch", ti, "fwd"), med("pyconv", pi, "fwd"),
                        med("torch", ti, "bwd"), med("pyconv", pi, "bwd")))
    rows.sort(key=lambda r: -r.lost)
    return Breakdown(model_name, mode, batch, rows, _median(totals["torch"]), _median(totals["pyconv"]))


def table(bd: Breakdown, top: Optional[int] = None):
    """A rich Table of the rows by time lost (the `top` worst, the rest summed in one line)."""
    from rich.table import Table

    what = f"training forward + backward, batch {bd.batch}" if bd.mode == "train" else \
        f"inference forward, batch {bd.batch}"
    t = Table(title=f"{bd.model}: where the time goes ({what}); lost = pyconv - torch, ms",
              title_justify="left")
    cols = ["layer", "kind", "input", "torch fwd", "pyconv fwd"]
    if bd.mode == "train":
        cols += ["torch bwd", "pyconv bwd"]
    cols += ["lost ms", "loses in"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("layer", "kind", "input", "loses in") else "right",
                     no_wrap=c in ("layer", "input"))

    def f(v):
        return "-" if math.isnan(v) else f"{v:.3f}"

    shown = bd.rows if top is None else bd.rows[:top]
    for r in shown:
        cells = [r.layer, r.kind, r.shape, f(r.torch_fwd), f(r.pyconv_fwd)]
        if bd.mode == "train":
            cells += [f(r.torch_bwd), f(r.pyconv_bwd)]
        style = "red" if r.lost > 0 else "green"
        cells += [f"[{style}]{r.lost:+.3f}[/{style}]", r.loses_in]
        t.add_row(*cells)
    rest = bd.rows[len(shown):]
    if rest:
        t.add_row(f"({len(rest)} more layers)", "", "", *[""] * (len(cols) - 5),
                  f"{sum(r.lost for r in rest):+.3f}", "")
    t.add_row("outside the layers", "", "", *[""] * (len(cols) - 5), f"{bd.lost_outside:+.3f}", "")
    return t


def summary(bd: Breakdown) -> str:
    lost = [r for r in bd.rows if r.lost > 0]
    by_pass = {p: sum(max(getattr(r, "lost_" + p), 0.0) for r in bd.rows) for p in ("fwd", "bwd")}
    # the hooks cost more on the side with more layer calls (torch: conv, BN and ReLU apart), so the
    # whole-network yardstick is --suite models; this line only sums up the table
    return (f"whole pass (with hooks; --suite models times it without): torch {bd.torch_total:.1f} ms, "
            f"pyconv {bd.pyconv_total:.1f} ms "
            f"({bd.torch_total / bd.pyconv_total:.2f}x torch); {len(lost)} of {len(bd.rows)} layers lose "
            f"{sum(r.lost for r in lost):.1f} ms (forward {by_pass['fwd']:.1f}, backward {by_pass['bwd']:.1f})")


def records(bd: Breakdown) -> List[dict]:
    return [dict(model=bd.model, mode=bd.mode, batch=bd.batch, layer=r.layer, kind=r.kind, input=r.shape,
                 torch_fwd_ms=r.torch_fwd, pyconv_fwd_ms=r.pyconv_fwd, torch_bwd_ms=r.torch_bwd,
                 pyconv_bwd_ms=r.pyconv_bwd, lost_ms=r.lost, loses_in=r.loses_in) for r in bd.rows]
