"""pyconv-bench: pyconv against PyTorch (and other engines), timed side by side in one process
(interleaved repeats, median and minimum; first call reported apart).

Layer suites: op x algorithm x backend on the real layers of named networks. By default each op
runs with algo="auto" on the backend "auto" picks (what users get); --algos (all of them) or
--algos LIST gives the algorithm-by-algorithm tables.
--suite models: whole networks converted with pyconv.convert, inference batch 1, inference batch N
and a training step, against torch eager and --peers onnxruntime,compile.
The default (quick) suite is the quick layers plus one small network (CIFAR ResNet-20).

Speed is shown as "vs torch" = torch time / pyconv time (above 1: pyconv is faster). Errors are
max|out - ref| / max|ref| against torch in float64 (layers); networks compare inference outputs with
torch's and a training step's gradients with the same step in float64 (torch's own error beside).
Ops, algorithms, backends and peers that cannot run are skipped with the reason.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import sys
import time
from typing import Dict, List, NamedTuple, Optional

import torch

import pyconv
from pyconv import autotune, backends, problem

from . import baseline, breakdown, machine, models, netreport, networks, peers, runner, suites
from .runner import CONV_OPS, OPS, Case, Result

# the concrete algorithms (the "winograd" alias runs one of the two tiles)
DEFAULT_ALGOS = tuple(a for a in problem.CONV_ALGOS if a != "winograd")  # what a bare --algos shows
LAYER_REPEATS = 5
MODELS_BATCH = 8
QUICK_MODELS, QUICK_MODES = ("cifar_resnet20",), ("infer1", "train")  # the quick suite's network row
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _csv_list(text: Optional[str]) -> List[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyconv-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="quick",
                    help=f"comma-separated suites, or 'all' (every layer suite) (default quick): "
                         f"{', '.join(list(suites.SUITES) + list(suites.ALIASES))}, models")
    ap.add_argument("--ops", help=f"comma-separated ops (default all): {', '.join(OPS)}")
    ap.add_argument("--algos", nargs="?", const="",
                    help=f"algorithm-by-algorithm tables: bare --algos runs {','.join(DEFAULT_ALGOS)}; or a "
                         f"comma-separated list of {', '.join(autotune.ALGOS)} (default: auto only)")
    ap.add_argument("--backends", help=f"comma-separated backends (default: the one 'auto' picks, or all with "
                                       f"--algos): {', '.join(backends.REGISTRY)}")
    ap.add_argument("--layers", help="comma-separated glob patterns on layer names (e.g. '*3x3*')")
    ap.add_argument("--models", help=f"networks for --suite models (default all): {', '.join(models.MODELS)}")
    ap.add_argument("--modes", help=f"network modes (default all): {', '.join(networks.MODES)} "
                                    f"(inference batch 1, inference batch N, training step batch N)")
    ap.add_argument("--peers", help=f"other engines beside torch: {', '.join(peers.MODEL_PEERS)} (networks), "
                                    f"{', '.join(peers.LAYER_PEERS)} (conv2d forward layers)")
    ap.add_argument("--batch", type=int,
                    help=f"batch size (default: the suite's; networks {MODELS_BATCH}, 1 for infer1)")
    ap.add_argument("--dtype", default="float32", help="float32, float64 or both comma-separated (layer suites)")
    ap.add_argument("--threads", type=int, help="threads for pyconv, torch and peers (default torch's)")
    net_repeats = ", ".join(f"{m.name} {m.repeats}" for m in models.MODELS.values())
    ap.add_argument("--repeats", type=int,
                    help=f"timed repeats per side (default {LAYER_REPEATS}; networks: {net_repeats})")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (default 1)")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 reference (layer suites)")
    ap.add_argument("--autotune", action="store_true", help="measured mode for algo=auto (pyconv.autotune)")
    ap.add_argument("--remeasure-peak", action="store_true", help="ignore the cached machine peaks")
    ap.add_argument("--explain", action="store_true",
                    help="print which algorithm algo='auto' picks for each conv layer and why, then exit")
    ap.add_argument("--breakdown", metavar="MODEL",
                    help="per-layer forward/backward times of MODEL, pyconv vs torch, sorted by time lost, then "
                         "exit (--modes train,inferN; --batch; --repeats, default 3)")
    ap.add_argument("--top", type=int, default=30, help="--breakdown: layers shown (default 30)")
    ap.add_argument("--list", action="store_true", help="list the suites and their layers, then exit")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--csv", metavar="PATH", help="write results as CSV (networks: PATH-models.csv beside layers)")
    ap.add_argument("--plot", metavar="PNG", help="bar chart of speed vs torch (needs matplotlib; networks: "
                                                  "PNG-models.png beside layers)")
    ap.add_argument("--save", metavar="NAME", help=f"store this run as baseline NAME ($PYCONV_BENCH_DIR or "
                                                   f".benchmarks/pyconv-bench/NAME.json)")
    ap.add_argument("--compare", metavar="NAME", help="print each row's change against baseline NAME; exit 1 when "
                                                      "one got slower by more than --fail-above")
    ap.add_argument("--fail-above", type=float, default=10.0, metavar="PCT",
                    help="--compare: the slowdown, in %%, that fails the run (default 10)")
    ap.add_argument("--compare-by", choices=baseline.COMPARE_BY, default="time",
                    help="--compare on pyconv's time, or on its speed relative to torch in the same run (default time)")
    return ap


class UsageError(Exception):
    pass


def _pick(values: List[str], known, what: str) -> List[str]:
    bad = [v for v in values if v not in known]
    if bad:
        raise UsageError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return values


def _auto_backends() -> List[str]:
    """The backends algo/backend="auto" runs on here: the CPU one, and the GPU one with a GPU."""
    devs = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = []
    for d in devs:
        try:
            out.append(backends.resolve("auto", d))
        except Exception:  # noqa: BLE001  (that device's backend is not built here: its cases skip)
            pass
    return out or ["cpp"]


class Plan(NamedTuple):
    """What a run does, from the command line."""
    layer_suites: List[suites.Suite]
    ops: List[str]
    algos: List[str]
    backends: List[str]
    dtypes: list
    model_names: List[str]
    modes: List[str]
    model_peers: List[str]
    layer_peers: List[str]


def _resolve_args(args) -> Plan:
    names = _csv_list(args.suite) or ["quick"]
    if names == ["all"]:
        names = [s for s in suites.SUITES if s != "tiny"]
    layer_suites = []
    for n in names:
        if n == "models":
            continue
        try:
            layer_suites.append(suites.get_suite(n))
        except KeyError as e:
            raise UsageError(e.args[0] + ", models") from None
    ops = _pick(_csv_list(args.ops), OPS, "op") if args.ops else list(OPS)
    if args.algos is None:
        algos = ["auto"]
    else:
        algos = _pick(_csv_list(args.algos), autotune.ALGOS, "algorithm") if args.algos else list(DEFAULT_ALGOS)
    if args.backends:
        bes = _pick(_csv_list(args.backends), list(backends.REGISTRY), "backend")
    else:
        bes = _auto_backends() if args.algos is None else list(backends.REGISTRY)
    dtypes = [DTYPES[d] for d in _pick(_csv_list(args.dtype), list(DTYPES), "dtype")]
    for flag, v, lo in (("--batch", args.batch, 1), ("--threads", args.threads, 1), ("--repeats", args.repeats, 1),
                        ("--warmup", args.warmup, 0), ("--top", args.top, 1)):
        if v is not None and v < lo:
            raise UsageError(f"{flag}={v}: expected an integer >= {lo}")
    model_names: List[str] = []
    modes = _pick(_csv_list(args.modes), networks.MODES, "mode") if args.modes else None
    if args.models:
        try:
            model_names = [models.get_model_spec(m).name for m in _csv_list(args.models)]
        except KeyError as e:
            raise UsageError(e.args[0]) from None
    if "models" in names:
        model_names = model_names or list(models.MODELS)
        modes = modes or list(networks.MODES)
    elif "quick" in names and not (args.ops or args.layers):  # the quick suite's one network row
        model_names = model_names or list(QUICK_MODELS)
        modes = modes or list(QUICK_MODES)
    else:
        model_names = []
    peer_names = _pick(_csv_list(args.peers), peers.PEERS, "peer")
    return Plan(layer_suites, ops, algos, bes, dtypes, model_names, modes or [],
                [p for p in peer_names if p in peers.MODEL_PEERS], [p for p in peer_names if p in peers.LAYER_PEERS])


def _layer_ok(name: str, patterns: List[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_cases(chosen, ops, algos, bes, dtypes, batch, patterns) -> List[Case]:
    cases = []
    for suite in chosen:
        n = batch or suite.batch
        for op in ops:
            if op in CONV_OPS or op == "batch_norm":
                layers = suites.conv_layers(suite)
            else:
                layers = suites.pool_layers(suite, "max" if op == "max_pool2d" else "avg")
            for layer in layers:
                if not _layer_ok(layer.name, patterns):
                    continue
                for be in bes:
                    for dt in dtypes:
                        for algo in (algos if op in CONV_OPS else ["-"]):
                            cases.append(Case(suite.name, op, layer, algo, be, dt, n))
    return cases


# ------------------------------------------------------------------------------------ output ---

def _ms(t: float) -> str:
    if not math.isfinite(t):
        return "-"
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _pct_peak(r: Result, peak: Dict[str, float]) -> float:
    p = peak.get("gflops" if r.unit == "GFLOP/s" else "gbs", 0.0)
    return 100.0 * r.rate / p if p else math.nan


def _peer_cells(r: Result, peer_names: List[str]) -> List[str]:
    cells = []
    for name in peer_names:
        p = next((p for p in r.peers if p.name == name), None)
        if p is None or p.status != "ok":
            cells += ["[red]error[/red]" if p is not None and p.status == "error" else "-", ""]
        else:
            cells += [_ms(p.median), f"{p.median / r.t_pyconv:.2f}x"]
    return cells


def _suite_table(suite_name: str, rows: List[Result], peaks, show_dtype: bool, peer_names: List[str] = ()):
    from rich.table import Table

    t = Table(title=f"suite {suite_name}", title_justify="left", show_lines=False)
    cols = [("layer", "left"), ("op", "left"), ("backend/algo", "left"), ("shape", "left"),
            ("pyconv ms", "right"), ("torch ms", "right"), ("1st call ms", "right"), ("rate", "right"),
            ("% peak", "right"), ("vs torch", "right"), ("max err", "right"), ("torch err", "right")]
    for name in peer_names:
        cols += [(f"{name} ms", "right"), (f"vs {name}", "right")]
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=col in ("layer", "shape", "backend/algo"))
    if show_dtype:
        t.add_column("dtype")
    prev = None
    for r in rows:
        c = r.case
        ba = c.backend + ("" if c.algo == "-" else f"/{c.algo}") + (f"->{r.picked}" if r.picked else "")
        if r.status == "ok":
            speed = r.speed_vs_torch
            style = "green" if speed >= 1 else ("red" if speed < 0.5 else "")
            unit = "GF/s" if r.unit == "GFLOP/s" else "GB/s"
            cells = [_ms(r.t_pyconv), _ms(r.t_torch), _ms(r.first_pyconv), f"{r.rate:.1f} {unit}",
                     f"{_pct_peak(r, peaks[(c.backend, c.dtype)]):.0f}%",
                     f"[{style}]{speed:.2f}x[/{style}]" if style else f"{speed:.2f}x",
                     f"{r.err_pyconv:.1e}", f"{r.err_torch:.1e}"]
        else:
            cells = ["[red]error[/red]"] + [""] * 7
        cells += _peer_cells(r, list(peer_names)) if r.status == "ok" else [""] * (2 * len(peer_names))
        name = c.layer.name if c.layer.name != prev else ""
        prev = c.layer.name
        t.add_row(name, c.op, ba, r.shape, *cells, *([_dt(c.dtype)] if show_dtype else []))
    return t


def _skip_notes(results: List[Result]) -> List[str]:
    """One line per distinct reason, with the ops/algos it covers and how many cases."""
    groups: Dict[str, Dict[str, set]] = {}
    for r in results:
        if r.status != "skipped":
            continue
        g = groups.setdefault(r.note, {"ops": set(), "layers": set(), "n": set()})
        g["ops"].add(r.case.op + ("" if r.case.algo == "-" else f"/{r.case.algo}"))
        g["layers"].add(r.case.layer.name)
        g["n"].add(r.case)
    out = []
    for note, g in groups.items():
        what = ", ".join(sorted(g["ops"])) if len(g["ops"]) <= 4 else f"{len(g['ops'])} op/algo pairs"
        out.append(f"skipped {len(g['n'])} case(s) [{what}; {len(g['layers'])} layer(s)]: {note}")
    return out


def _result_record(r: Result, peaks) -> Dict[str, object]:
    c = r.case
    d = {"id": c.id, "suite": c.suite, "layer": c.layer.name, "op": c.op, "algo": c.algo, "picked": r.picked,
         "backend": c.backend, "dtype": _dt(c.dtype), "batch": c.batch, "shape": r.shape, "status": r.status,
         "note": r.note, "unit": r.unit, "work": r.work}
    for p in r.peers:
        d.update({f"{p.name}_status": p.status, f"{p.name}_note": p.note, f"{p.name}_ms": p.median * 1e3,
                  f"{p.name}_min_ms": p.min * 1e3, f"{p.name}_err": p.err,
                  f"speed_vs_{p.name}": p.median / r.t_pyconv})  # above 1: pyconv is faster than the peer
    if r.status == "ok":
        pk = peaks[(c.backend, c.dtype)]
        d.update({"pyconv_ms": r.t_pyconv * 1e3, "torch_ms": r.t_torch * 1e3,
                  "pyconv_min_ms": r.min_pyconv * 1e3, "torch_min_ms": r.min_torch * 1e3,
                  "pyconv_first_call_ms": r.first_pyconv * 1e3, "torch_first_call_ms": r.first_torch * 1e3,
                  "pyconv_rate": r.rate, "torch_rate": r.torch_rate, "pct_peak": _pct_peak(r, pk),
                  "torch_pct_peak": 100.0 * r.torch_rate / pk["gflops" if r.unit == "GFLOP/s" else "gbs"],
                  "speed_vs_torch": r.speed_vs_torch, "max_err": r.err_pyconv, "torch_max_err": r.err_torch})
    return d


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


CSV_FIELDS = ["id", "suite", "layer", "op", "algo", "picked", "backend", "dtype", "batch", "shape", "status", "unit",
              "work",
              "pyconv_ms", "torch_ms", "pyconv_min_ms", "torch_min_ms", "pyconv_first_call_ms", "torch_first_call_ms",
              "pyconv_rate", "torch_rate",
              "pct_peak", "torch_pct_peak", "speed_vs_torch", "max_err", "torch_max_err", "note"]


def write_plot(path: str, results: List[Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    ops = [op for op in OPS if any(r.case.op == op for r in ok)]
    if not ops:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no results", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        rows = [r for r in ok if r.case.op == op]
        layers = list(dict.fromkeys(f"{r.case.suite}:{r.case.layer.name}" for r in rows))
        series = list(dict.fromkeys(f"{r.case.backend}" + ("" if r.case.algo == "-" else f"/{r.case.algo}")
                                    + ("" if r.case.dtype == torch.float32 else f" {_dt(r.case.dtype)}")
                                    for r in rows))
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            xs, ys = [], []
            for r in rows:
                name = f"{r.case.backend}" + ("" if r.case.algo == "-" else f"/{r.case.algo}") + \
                    ("" if r.case.dtype == torch.float32 else f" {_dt(r.case.dtype)}")
                if name == s:
                    xs.append(layers.index(f"{r.case.suite}:{r.case.layer.name}") + (i - (len(series) - 1) / 2) * width)
                    ys.append(r.speed_vs_torch)
            ax.bar(xs, ys, width=width, label=s)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")  # 0.1x and 10x are equally far from parity
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([lay.split(":", 1)[1] for lay in layers], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speed vs torch (x, log)")
        ax.set_title(op)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _explain(console, chosen, bes, dtypes, batch, patterns) -> None:
    from rich.table import Table

    t = Table(title="algo='auto' (" + ("measured" if autotune.autotune_enabled() else "heuristic") + ")",
              title_justify="left")
    for col in ("layer", "shape", "backend", "dtype", "picks", "source", "why"):
        t.add_column(col, no_wrap=col != "why")
    for suite in chosen:
        n = batch or suite.batch
        for layer in suites.conv_layers(suite):
            if not _layer_ok(layer.name, patterns):
                continue
            for be in bes:
                if be not in pyconv.available_backends():
                    continue
                for dt in dtypes:
                    ch = pyconv.explain_algo((n, layer.C, layer.H, layer.W),
                                             (layer.K, layer.C // layer.groups, layer.R, layer.S), layer.stride,
                                             layer.padding, 1, layer.groups, dtype=dt, backend=be)
                    why = ch.rule + ("; " + ", ".join(f"{a} {v:.3g} ms" for a, v in ch.times_ms.items())
                                     if ch.times_ms else "")
                    t.add_row(layer.name, layer.describe(n), be, _dt(dt), ch.algo, ch.source, why)
    console.print(t)
    missing = [b for b in bes if b not in pyconv.available_backends()]
    if missing:
        console.print(f"not available here: {', '.join(missing)}")


def _process_warmup(bes: List[str]) -> Optional[float]:
    """Seconds of pyconv's first op call in this process (one-time imports), paid here so the
    per-case "1st call" column shows per-shape costs (JIT, autotuning, first touch) only."""
    for be in bes:
        dev = backends.REGISTRY[be].device
        try:
            t0 = time.perf_counter()
            pyconv.functional.conv2d(torch.ones(1, 1, 3, 3, device=dev), torch.ones(1, 1, 1, 1, device=dev),
                                     algo="direct", backend=be)
            return time.perf_counter() - t0
        except Exception:  # that backend has no direct conv yet: try the next
            continue
    return None


def _beside(path: str, tag: str) -> str:
    """r.csv -> r-models.csv: where the network rows go when layer rows take `path`."""
    root, ext = os.path.splitext(path)
    return f"{root}-{tag}{ext}"


def _write_csv(path: str, fields: List[str], records: List[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})


def _header(info) -> str:
    load = f" | load {info['load_avg_1m']}" if "load_avg_1m" in info else ""  # judge noisy numbers by it
    return (f"pyconv {info['pyconv']} | torch {info['torch']} | {info['cpu']} ({info['isa']}), "
            f"{info['physical_cores']} cores, {info['threads']} threads | backends here: "
            f"{', '.join(info['backends'])} | malloc: {info.get('malloc', '?')}{load}")


def _run_breakdown(args, console, info) -> int:
    try:
        name = models.get_model_spec(args.breakdown).name
    except KeyError as e:
        print(f"pyconv-bench: error: {e.args[0]}", file=sys.stderr)
        return 2
    batch = args.batch or MODELS_BATCH
    runs = []  # (breakdown mode, batch): training step and inference forward at batch N by default
    for mode in _csv_list(args.modes) or ["train", "inferN"]:  # not the quick suite's modes
        run = ("train", batch) if mode == "train" else ("infer", 1 if mode == "infer1" else batch)
        if run not in runs:
            runs.append(run)
    console.print(_header(info), highlight=False)
    docs = []
    for mode, n in runs:
        with console.status(f"timing {name} layer by layer ({mode}, batch {n})"):
            bd = breakdown.run(name, mode, n, repeats=args.repeats or 3, warmup=args.warmup)
        console.print(breakdown.table(bd, args.top))
        console.print(breakdown.summary(bd), markup=False, highlight=False)
        docs += breakdown.records(bd)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_json_safe({"machine": info, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "breakdown": docs}), f, indent=1)
    return 0


def _list(console) -> None:
    for s in suites.SUITES.values():
        console.print(f"[bold]{s.name}[/bold] (batch {s.batch}): {s.about}")
        for layer in s.layers:
            console.print(f"  {layer.name:34} {layer.describe(s.batch)}")
    console.print(f"[bold]models[/bold] (modes {', '.join(networks.MODES)}; batch {MODELS_BATCH}): whole networks")
    for m in models.MODELS.values():
        console.print(f"  {m.name:34} {m.about}")


# -------------------------------------------------------------------------------------- main ---

def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = build_parser().parse_args(argv)
    console = Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None)
    err = Console(stderr=True)
    try:
        plan = _resolve_args(args)
    except UsageError as e:
        print(f"pyconv-bench: error: {e}", file=sys.stderr)
        return 2
    patterns = _csv_list(args.layers)
    if args.list:
        _list(console)
        return 0
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("pyconv-bench: error: --plot needs matplotlib; install it with pip install 'pyconv[plot]'",
                  file=sys.stderr)
            return 2
    old_doc = None
    if args.compare:  # a missing baseline is a usage error, found before anything runs
        try:
            old_doc = baseline.load(args.compare)
        except (FileNotFoundError, ValueError) as e:
            print(f"pyconv-bench: error: --compare: {e}", file=sys.stderr)
            return 2
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    pyconv.set_num_threads(threads)
    if args.autotune:
        pyconv.autotune(True)
    if args.explain:
        _explain(console, plan.layer_suites, plan.backends, plan.dtypes, args.batch, patterns)
        return 0

    info = machine.describe(threads)
    if args.breakdown:
        return _run_breakdown(args, console, info)
    cases = build_cases(plan.layer_suites, plan.ops, plan.algos, plan.backends, plan.dtypes, args.batch, patterns)
    net_cases = networks.cases_for(plan.model_names, plan.modes, args.batch or MODELS_BATCH)
    if not cases and not net_cases:
        print("pyconv-bench: error: no case matches these filters", file=sys.stderr)
        return 2
    console.print(_header(info), highlight=False)
    peaks = {}
    bes = plan.backends if cases else []
    for be in bes:
        if be in pyconv.available_backends():
            dev = torch.device(backends.REGISTRY[be].device)
            for dt in plan.dtypes:
                key = (dev.type, dt)
                if key not in peaks:
                    peaks[key] = machine.peaks(dev, dt, threads, args.remeasure_peak)
                    pk = peaks[key]
                    console.print(f"peak ({dev.type}, {_dt(dt)}{', cached' if pk.get('cached') else ''}): "
                                  f"{pk['gflops']:.1f} GFLOP/s ({pk['gflops_source']}), "
                                  f"{pk['gbs']:.1f} GB/s ({pk['gbs_source']})")
    peak_of = {(be, dt): peaks.get((backends.REGISTRY[be].device, dt), {}) for be in bes for dt in plan.dtypes}

    startup = _process_warmup([b for b in (bes or _auto_backends()) if b in pyconv.available_backends()])
    if startup is not None:
        console.print(f"pyconv one-time start-up (first op call; torch.library imports torch._dynamo): "
                      f"{startup:.2f} s, not counted in any case")
    layer_repeats = args.repeats or LAYER_REPEATS
    results: List[Result] = []
    net_results: List[networks.NetResult] = []
    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=len(cases) + len(net_cases))
        for c in cases:
            progress.update(task, description=c.label[:60].ljust(60))
            results.append(runner.run_case(c, layer_repeats, args.warmup, check=not args.no_check,
                                           peers=plan.layer_peers))
            progress.advance(task)
        base, base_name = None, None
        for nc in net_cases:
            progress.update(task, description=nc.label[:60].ljust(60))
            if nc.model != base_name:  # one seeded model per network; every side copies it
                base = None  # the last network goes before the next is built
                base, base_name = models.build(nc.model), nc.model
            reps = args.repeats or models.get_model_spec(nc.model).repeats
            net_results.append(networks.run_case(nc, reps, args.warmup, threads, plan.model_peers, base))
            progress.advance(task)
        base = None
    elapsed = time.perf_counter() - t_start

    show_dtype = len(plan.dtypes) > 1
    for suite in plan.layer_suites:
        rows = [r for r in results if r.case.suite == suite.name and r.status in ("ok", "error")]
        rows.sort(key=lambda r: ([lay.name for lay in suite.layers].index(r.case.layer.name), OPS.index(r.case.op)))
        if rows:
            console.print(_suite_table(suite.name, rows, peak_of, show_dtype, plan.layer_peers))
        else:
            console.print(f"suite {suite.name}: nothing ran")
    for r in results:
        if r.status == "error":
            console.print(f"[red]error[/red] {r.case.label}: {r.note}", markup=True, highlight=False)
    for line in _skip_notes(results):
        console.print(line, markup=False, highlight=False)
    for name in plan.layer_peers:
        why = {p.note for r in results for p in r.peers if p.name == name and p.status != "ok"}
        if why and not any(p.name == name and p.status == "ok" for r in results for p in r.peers):
            console.print(f"peer {name} did not run: {'; '.join(sorted(why))}", markup=False, highlight=False)
    summary = runner.summarize(results)
    if summary:
        console.print("geomean speed vs torch (>1: pyconv faster): " + " | ".join(
            f"{k} {v['geomean_speed_vs_torch']:.2f}x ({v['layers']})" for k, v in summary.items()),
            markup=False, highlight=False)
    if net_results:
        console.print(netreport.table(net_results, plan.model_peers))
        for line in netreport.notes(net_results):
            console.print(line, highlight=False)
    if plan.model_peers and not net_results:
        console.print(f"note: {', '.join(plan.model_peers)}: peer(s) for whole networks only (--suite models)")
    if plan.layer_peers and not results:
        console.print(f"note: {', '.join(plan.layer_peers)}: peer(s) for layer suites only")
    n_ok = sum(r.status == "ok" for r in results) + sum(r.status == "ok" for r in net_results)
    n_err = sum(r.status == "error" for r in results) + sum(r.status == "error" for r in net_results)
    n_all = len(results) + len(net_results)
    console.print(f"{n_ok} ran, {n_all - n_ok - n_err} skipped, {n_err} failed in {elapsed:.1f} s")

    records = [_result_record(r, peak_of) for r in results]
    net_records = [netreport.record(r, plan.model_peers) for r in net_results]
    doc = {"machine": info, "startup_s": startup,
           "peaks": [dict(device=k[0], dtype=_dt(k[1]), **v) for k, v in peaks.items()],
           "config": {"suites": [s.name for s in plan.layer_suites] + (["models"] if net_cases else []),
                      "ops": plan.ops, "algos": plan.algos, "backends": plan.backends,
                      "dtypes": [_dt(d) for d in plan.dtypes], "batch": args.batch, "threads": threads,
                      "repeats": layer_repeats, "warmup": args.warmup, "autotune": autotune.autotune_enabled(),
                      "layers": patterns, "models": plan.model_names, "modes": plan.modes,
                      "models_batch": args.batch or MODELS_BATCH,
                      "models_repeats": {m: args.repeats or models.get_model_spec(m).repeats
                                         for m in plan.model_names},
                      "peers": plan.layer_peers + plan.model_peers,
                      "timing": "median (and min) of interleaved repeats; speed_vs_torch = torch_ms / pyconv_ms; "
                                "speed_vs_PEER = PEER_ms / pyconv_ms"},
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "elapsed_s": elapsed,
           "summary": summary, "results": records, "models": net_records}
    doc = _json_safe(doc)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    if args.csv:
        layer_fields = CSV_FIELDS + [f"{p}_{k}" for p in plan.layer_peers for k in ("ms", "min_ms", "err", "note")] \
            + [f"speed_vs_{p}" for p in plan.layer_peers]
        if records:
            _write_csv(args.csv, layer_fields, records)
        if net_records:
            _write_csv(_beside(args.csv, "models") if records else args.csv,
                       netreport.csv_fields(plan.model_peers), net_records)
    if args.plot:
        if results:
            write_plot(args.plot, results)
        if net_results:
            netreport.write_plot(_beside(args.plot, "models") if results else args.plot, net_results,
                                 plan.model_peers)
    if args.save:
        console.print(f"saved baseline {args.save!r}: {baseline.save(args.save, doc)}")
    n_slower = 0
    if old_doc is not None:
        changes = baseline.compare(old_doc, doc, args.fail_above, args.compare_by)
        console.print(baseline.table(changes, args.compare, args.fail_above, args.compare_by))
        slower = baseline.regressions(changes)
        n_slower = len(slower)
        console.print(f"{baseline.matched(changes)} row(s) compared; " + (
            f"[red]{n_slower} slower by more than {args.fail_above:g}%[/red]" if slower else
            f"none slower by more than {args.fail_above:g}%"))
    return 1 if n_err or n_slower else 0
