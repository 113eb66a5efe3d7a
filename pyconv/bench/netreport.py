"""Output for the whole-network rows: the table, JSON/CSV records and the per-model bar chart."""
from __future__ import annotations

import math
from typing import List, Sequence

from .networks import NetResult, mode_label

BASE_FIELDS = ["id", "suite", "model", "mode", "batch", "status", "note", "torch_ms", "torch_min_ms", "pyconv_ms",
               "pyconv_min_ms", "speed_vs_torch", "speed_vs_torch_min", "torch_first_call_ms",
               "pyconv_first_call_ms", "pyconv_err", "pyconv_loss_err", "torch_err", "torch_loss_err"]
SHORT = {"onnxruntime": "ort"}  # table headers only; JSON/CSV keep the full names
PEER_FIELDS = ["{p}_status", "{p}_ms", "{p}_min_ms", "{p}_setup_s", "{p}_err", "speed_vs_{p}", "{p}_speed_vs_torch",
               "{p}_note"]


def csv_fields(peer_names: Sequence[str]) -> List[str]:
    return BASE_FIELDS + [f.format(p=p) for p in peer_names for f in PEER_FIELDS]


def record(r: NetResult, peer_names: Sequence[str]) -> dict:
    c = r.case
    py, tt = r.sides.get("pyconv"), r.sides["torch"]
    d = {"id": c.id, "suite": "models", "model": c.model, "mode": c.mode, "batch": c.batch, "status": r.status,
         "note": r.note, "torch_ms": r.ms("torch"), "torch_min_ms": r.ms("torch", "min"),
         "pyconv_ms": r.ms("pyconv"), "pyconv_min_ms": r.ms("pyconv", "min"),
         "speed_vs_torch": r.speed("pyconv"), "speed_vs_torch_min": r.speed("pyconv", stat="min"),
         "torch_first_call_ms": tt.first * 1e3, "pyconv_first_call_ms": py.first * 1e3 if py else math.nan,
         # inference: vs torch's output; training: gradients and loss vs a float64 step (torch's own beside)
         "pyconv_err": py.err if py else math.nan, "pyconv_loss_err": py.loss_err if py else math.nan,
         "torch_err": tt.err if c.mode == "train" else math.nan,
         "torch_loss_err": tt.loss_err if c.mode == "train" else math.nan}
    for p in peer_names:
        s = r.sides.get(p)
        if s is None:
            continue
        d.update({f"{p}_status": s.status, f"{p}_note": s.note, f"{p}_ms": r.ms(p), f"{p}_min_ms": r.ms(p, "min"),
                  f"{p}_setup_s": s.first, f"{p}_err": s.err,
                  f"speed_vs_{p}": r.ms(p) / r.ms("pyconv"),  # above 1: pyconv is faster than the peer
                  f"{p}_speed_vs_torch": r.speed(p)})
    return d


def _x(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2f}x"


def _ms(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _styled_x(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    style = "green" if v >= 1 else ("red" if v < 0.8 else "")
    return f"[{style}]{v:.2f}x[/{style}]" if style else f"{v:.2f}x"


def table(results: List[NetResult], peer_names: Sequence[str], title: str = "whole networks"):
    from rich.table import Table

    names = ", ".join(f"{v} = {k}" for k, v in SHORT.items() if k in peer_names)
    t = Table(title=f"{title}: pyconv.convert(model) vs torch eager (ms median / min; vs X = X's time / pyconv's"
                    + (f"; {names}" if names else "") + ")", title_justify="left")
    cols = ["model", "mode", "torch ms", "pyconv ms", "vs torch"]
    for p in peer_names:
        short = SHORT.get(p, p)
        cols += [f"{short} ms", f"vs {short}", f"{short} vs torch"]
    cols += ["pyconv err", "pyconv 1st call ms"]  # err: inference vs torch; training grads vs float64
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "mode") else "right", no_wrap=c in ("model", "mode"))
    prev = None
    for r in results:
        c = r.case
        cells = [c.model if c.model != prev else "", mode_label(c.mode, c.batch)]
        prev = c.model
        py = r.sides.get("pyconv")
        cells += [f"{_ms(r.ms('torch'))} / {_ms(r.ms('torch', 'min'))}"]
        if r.status == "ok":
            cells += [f"{_ms(r.ms('pyconv'))} / {_ms(r.ms('pyconv', 'min'))}",
                      f"{_styled_x(r.speed('pyconv'))} / {_x(r.speed('pyconv', stat='min'))}"]
        else:
            cells += ["[red]ERROR[/red]" if r.status == "error" else "skipped", ""]
        for p in peer_names:
            s = r.sides.get(p)
            if s is None or s.status != "ok":
                cells += ["[red]error[/red]" if s is not None and s.status == "error" else "-", "", ""]
                continue
            cells += [f"{_ms(r.ms(p))} / {_ms(r.ms(p, 'min'))}",
                      f"{_styled_x(r.ms(p) / r.ms('pyconv'))} / {_x(r.ms(p, 'min') / r.ms('pyconv', 'min'))}",
                      _x(r.speed(p))]
        if py is not None and math.isfinite(py.err):  # training: gradients vs float64, torch's own beside
            err = f"{py.err:.1e}" + (f" (torch {r.sides['torch'].err:.1e})" if c.mode == "train" else "")
        else:
            err = "-"
        cells += [err, _ms(py.first * 1e3) if py is not None and py.status == "ok" else "-"]
        t.add_row(*cells)
    return t


def notes(results: List[NetResult]) -> List[str]:
    """Errors (loud), skipped peers (once per reason) and peers' setup times."""
    out, seen = [], set()
    for r in results:
        for s in r.sides.values():
            if s.status == "error":
                out.append(f"[red]ERROR[/red] {r.case.label} [{s.name}]: {s.note}")
            elif s.status == "skipped" and (s.name, s.note) not in seen:
                seen.add((s.name, s.note))
                out.append(f"skipped {s.name}: {s.note}")
    setups = [f"{r.case.model}/{r.case.mode} {s.name} {s.first:.1f} s" for r in results for s in r.sides.values()
              if s.status == "ok" and s.name in ("onnxruntime", "compile")]
    if setups:
        out.append("peer setup, not in the timings (export + session, or compile + first call): " + ", ".join(setups))
    return out


def write_plot(path: str, results: List[NetResult], peer_names: Sequence[str]) -> None:
    """One panel per model: per mode, bars of each engine's speed relative to torch eager (log scale,
    one y axis for all panels so the panels compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    model_names = list(dict.fromkeys(r.case.model for r in results))
    if not model_names:
        return
    engines = ["pyconv"] + list(peer_names)
    speeds = [v for r in results for e in engines for v in [r.speed(e)] if math.isfinite(v) and v > 0]
    lo, hi = min(speeds + [1.0]) / 1.4, max(speeds + [1.0]) * 1.4
    fig, axes = plt.subplots(1, len(model_names), figsize=(2.0 + 2.7 * len(model_names), 4.4), squeeze=False,
                             sharey=True)
    for ax, m in zip(axes[0], model_names):
        rows = [r for r in results if r.case.model == m]
        width = 0.8 / len(engines)
        for i, e in enumerate(engines):
            xs, ys = [], []
            for k, r in enumerate(rows):
                v = r.speed(e)
                if math.isfinite(v) and v > 0:
                    xs.append(k + (i - (len(engines) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width=width, label=e, color=f"C{i}")
            for b, v in zip(bars, ys):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="torch eager")
        ax.set_yscale("log")  # 0.5x and 2x are equally far from parity
        ax.set_ylim(lo, hi)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([mode_label(r.case.mode, r.case.batch).replace(" step", "") for r in rows],
                           rotation=20, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    ticks = [2.0 ** k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
    axes[0][0].yaxis.set_major_locator(FixedLocator(ticks))
    axes[0][0].yaxis.set_minor_locator(NullLocator())
    axes[0][0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    axes[0][0].set_ylabel("speed vs torch eager (log; above 1 = faster)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
