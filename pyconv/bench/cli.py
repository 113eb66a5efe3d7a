"""pyconv-bench: pyconv's kernels against PyTorch, op x algorithm x backend on named layer suites,
timed side by side in one process (interleaved repeats, median; first call reported apart).

Speed is shown as "vs torch" = torch time / pyconv time (above 1: pyconv is faster). Errors are
max|out - ref| / max|ref| against torch in float64. Ops, algorithms and backends pyconv does not have
yet are skipped with a note, so the table grows as kernels land.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
import time
from typing import Dict, List, Optional

import torch

import pyconv
from pyconv import autotune, backends, problem

from . import machine, runner, suites
from .runner import CONV_OPS, OPS, Case, Result

# the concrete algorithms (the "winograd" alias runs one of the two tiles)
DEFAULT_ALGOS = tuple(a for a in problem.CONV_ALGOS if a != "winograd")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _csv_list(text: Optional[str]) -> List[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyconv-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="quick",
                    help=f"comma-separated suites, or 'all' (default quick): "
                         f"{', '.join(list(suites.SUITES) + list(suites.ALIASES))}")
    ap.add_argument("--ops", help=f"comma-separated ops (default all): {', '.join(OPS)}")
    ap.add_argument("--algos", help=f"comma-separated conv algorithms (default {','.join(DEFAULT_ALGOS)}); "
                                    f"any of {', '.join(autotune.ALGOS)}")
    ap.add_argument("--backends", help=f"comma-separated backends (default all): {', '.join(backends.REGISTRY)}")
    ap.add_argument("--layers", help="comma-separated glob patterns on layer names (e.g. '*3x3*')")
    ap.add_argument("--batch", type=int, help="batch size (default: the suite's)")
    ap.add_argument("--dtype", default="float32", help="float32, float64 or both comma-separated")
    ap.add_argument("--threads", type=int, help="threads for pyconv and torch (default torch's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median; default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (default 1)")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 reference")
    ap.add_argument("--autotune", action="store_true", help="measured mode for algo=auto (pyconv.autotune)")
    ap.add_argument("--remeasure-peak", action="store_true", help="ignore the cached machine peaks")
    ap.add_argument("--explain", action="store_true",
                    help="print which algorithm algo='auto' picks for each conv layer and why, then exit")
    ap.add_argument("--list", action="store_true", help="list the suites and their layers, then exit")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--csv", metavar="PATH", help="write results as CSV")
    ap.add_argument("--plot", metavar="PNG", help="bar chart of speed vs torch (needs matplotlib)")
    return ap


class UsageError(Exception):
    pass


def _pick(values: List[str], known, what: str) -> List[str]:
    bad = [v for v in values if v not in known]
    if bad:
        raise UsageError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return values


def _resolve_args(args):
    names = _csv_list(args.suite)
    if names == ["all"]:
        names = [s for s in suites.SUITES if s != "tiny"]
    chosen = []
    for n in names or ["quick"]:
        try:
            chosen.append(suites.get_suite(n))
        except KeyError as e:
            raise UsageError(e.args[0]) from None
    ops = _pick(_csv_list(args.ops), OPS, "op") if args.ops else list(OPS)
    algos = _pick(_csv_list(args.algos), autotune.ALGOS, "algorithm") if args.algos else list(DEFAULT_ALGOS)
    bes = _pick(_csv_list(args.backends), list(backends.REGISTRY), "backend") if args.backends \
        else list(backends.REGISTRY)
    dtypes = [DTYPES[d] for d in _pick(_csv_list(args.dtype), list(DTYPES), "dtype")]
    for flag, v, lo in (("--batch", args.batch, 1), ("--threads", args.threads, 1), ("--repeats", args.repeats, 1),
                        ("--warmup", args.warmup, 0)):
        if v is not None and v < lo:
            raise UsageError(f"{flag}={v}: expected an integer >= {lo}")
    return chosen, ops, algos, bes, dtypes


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


def _suite_table(suite_name: str, rows: List[Result], peaks, show_dtype: bool):
    from rich.table import Table

    t = Table(title=f"suite {suite_name}", title_justify="left", show_lines=False)
    for col, just in (("layer", "left"), ("op", "left"), ("backend/algo", "left"), ("shape", "left"),
                      ("pyconv ms", "right"), ("torch ms", "right"), ("1st call ms", "right"), ("rate", "right"),
                      ("% peak", "right"), ("vs torch", "right"), ("max err", "right"), ("torch err", "right")):
        t.add_column(col, justify=just, no_wrap=col in ("layer", "shape"))
    if show_dtype:
        t.add_column("dtype")
    prev = None
    for r in rows:
        c = r.case
        ba = c.backend + ("" if c.algo == "-" else f"/{c.algo}")
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
    d = {"suite": c.suite, "layer": c.layer.name, "op": c.op, "algo": c.algo, "backend": c.backend,
         "dtype": _dt(c.dtype), "batch": c.batch, "shape": r.shape, "status": r.status, "note": r.note,
         "unit": r.unit, "work": r.work}
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


CSV_FIELDS = ["suite", "layer", "op", "algo", "backend", "dtype", "batch", "shape", "status", "unit", "work",
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


# -------------------------------------------------------------------------------------- main ---

def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = build_parser().parse_args(argv)
    console = Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None)
    err = Console(stderr=True)
    try:
        chosen, ops, algos, bes, dtypes = _resolve_args(args)
    except UsageError as e:
        print(f"pyconv-bench: error: {e}", file=sys.stderr)
        return 2
    patterns = _csv_list(args.layers)
    if args.list:
        for s in suites.SUITES.values():
            console.print(f"[bold]{s.name}[/bold] (batch {s.batch}): {s.about}")
            for layer in s.layers:
                console.print(f"  {layer.name:34} {layer.describe(s.batch)}")
        return 0
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("pyconv-bench: error: --plot needs matplotlib; install it with pip install 'pyconv[plot]'",
                  file=sys.stderr)
            return 2
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    pyconv.set_num_threads(threads)
    if args.autotune:
        pyconv.autotune(True)
    if args.explain:
        _explain(console, chosen, bes, dtypes, args.batch, patterns)
        return 0

    info = machine.describe(threads)
    console.print(f"pyconv {info['pyconv']} | torch {info['torch']} | {info['cpu']} ({info['isa']}), "
                  f"{info['physical_cores']} cores, {threads} threads | backends here: "
                  f"{', '.join(info['backends'])}")
    peaks = {}
    for be in bes:
        if be in pyconv.available_backends():
            dev = torch.device(backends.REGISTRY[be].device)
            for dt in dtypes:
                key = (dev.type, dt)
                if key not in peaks:
                    peaks[key] = machine.peaks(dev, dt, threads, args.remeasure_peak)
                    pk = peaks[key]
                    console.print(f"peak ({dev.type}, {_dt(dt)}{', cached' if pk.get('cached') else ''}): "
                                  f"{pk['gflops']:.1f} GFLOP/s ({pk['gflops_source']}), "
                                  f"{pk['gbs']:.1f} GB/s ({pk['gbs_source']})")
    peak_of = {(be, dt): peaks.get((backends.REGISTRY[be].device, dt), {}) for be in bes for dt in dtypes}

    startup = _process_warmup([b for b in bes if b in pyconv.available_backends()])
    if startup is not None:
        console.print(f"pyconv one-time start-up (first op call; torch.library imports torch._dynamo): "
                      f"{startup:.2f} s, not counted in any case")
    cases = build_cases(chosen, ops, algos, bes, dtypes, args.batch, patterns)
    if not cases:
        print("pyconv-bench: error: no case matches these filters", file=sys.stderr)
        return 2
    results: List[Result] = []
    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for c in cases:
            progress.update(task, description=c.label[:60].ljust(60))
            results.append(runner.run_case(c, args.repeats, args.warmup, check=not args.no_check))
            progress.advance(task)
    elapsed = time.perf_counter() - t_start

    show_dtype = len(dtypes) > 1
    for suite in chosen:
        rows = [r for r in results if r.case.suite == suite.name and r.status in ("ok", "error")]
        rows.sort(key=lambda r: ([lay.name for lay in suite.layers].index(r.case.layer.name), OPS.index(r.case.op)))
        if rows:
            console.print(_suite_table(suite.name, rows, peak_of, show_dtype))
        else:
            console.print(f"suite {suite.name}: nothing ran")
    for r in results:
        if r.status == "error":
            console.print(f"[red]error[/red] {r.case.label}: {r.note}", markup=True, highlight=False)
    for line in _skip_notes(results):
        console.print(line, markup=False, highlight=False)
    summary = runner.summarize(results)
    if summary:
        console.print("geomean speed vs torch (>1: pyconv faster): " + " | ".join(
            f"{k} {v['geomean_speed_vs_torch']:.2f}x ({v['layers']})" for k, v in summary.items()),
            markup=False, highlight=False)
    n_ok = sum(r.status == "ok" for r in results)
    n_err = sum(r.status == "error" for r in results)
    console.print(f"{n_ok} ran, {len(results) - n_ok - n_err} skipped, {n_err} failed in {elapsed:.1f} s")

    records = [_result_record(r, peak_of) for r in results]
    if args.json:
        doc = {"machine": info, "startup_s": startup,
               "peaks": [dict(device=k[0], dtype=_dt(k[1]), **v) for k, v in peaks.items()],
               "config": {"suites": [s.name for s in chosen], "ops": ops, "algos": algos, "backends": bes,
                          "dtypes": [_dt(d) for d in dtypes], "batch": args.batch, "threads": threads,
                          "repeats": args.repeats, "warmup": args.warmup, "autotune": autotune.autotune_enabled(),
                          "layers": patterns, "timing": "median of interleaved repeats; speed_vs_torch = "
                                                        "torch_ms / pyconv_ms"},
               "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "elapsed_s": elapsed,
               "summary": summary, "results": records}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_json_safe(doc), f, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for rec in records:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})
    if args.plot:
        write_plot(args.plot, results)
    return 1 if n_err else 0
