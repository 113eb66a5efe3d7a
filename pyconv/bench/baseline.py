"""Saved runs and the comparison against them (`--save NAME`, `--compare NAME`), as
pytest-benchmark does it.

A baseline is the run's JSON document (what `--json` writes) stored as
`$PYCONV_BENCH_DIR/NAME.json`, by default `.benchmarks/pyconv-bench/NAME.json` under the current
directory (`.benchmarks/` is git-ignored); a NAME that ends in .json or contains a path separator
is used as a path. Rows are matched by their stable `id` (suite/layer/op/backend/algo/dtype/batch
for layers, models/MODEL/MODE/bBATCH for networks).

The comparison is on pyconv's median time (`--compare-by time`, default) or on its speed relative
to torch measured beside it in the same run (`--compare-by vs-torch`), which cancels out a machine
that is busier or slower than when the baseline was taken.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, NamedTuple

COMPARE_BY = ("time", "vs-torch")


def baseline_dir() -> str:
    return os.environ.get("PYCONV_BENCH_DIR") or os.path.join(os.getcwd(), ".benchmarks", "pyconv-bench")


def path_for(name: str) -> str:
    if name.endswith(".json") or os.sep in name or (os.altsep and os.altsep in name):
        return name
    return os.path.join(baseline_dir(), name + ".json")


def save(name: str, doc: dict) -> str:
    path = path_for(name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def load(name: str) -> dict:
    """The saved document; FileNotFoundError naming the baselines that do exist."""
    path = path_for(name)
    if not os.path.exists(path):
        d = os.path.dirname(path) or "."
        have = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".json")) if os.path.isdir(d) else []
        raise FileNotFoundError(f"no baseline {name!r} ({path}); saved here: {', '.join(have) or 'none'}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rows_of(doc: dict) -> Dict[str, dict]:
    """id -> row, over a document's layer results and model results that ran."""
    out = {}
    for key in ("results", "models"):
        for r in doc.get(key) or []:
            if r.get("id") and r.get("status") == "ok":
                out[r["id"]] = r
    return out


class Change(NamedTuple):
    id: str
    old: float  # the compared quantity: pyconv ms, or torch ms / pyconv ms
    new: float
    slower_pct: float  # how much slower pyconv got, in %, by the chosen measure (negative: faster)
    torch_pct: float  # torch's own time change, % (how much the machine itself moved)
    status: str  # "slower" (past the threshold), "ok", "new", "gone"


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def compare(old_doc: dict, new_doc: dict, fail_above: float, by: str = "time") -> List[Change]:
    if by not in COMPARE_BY:
        raise ValueError(f"compare by {by!r}: expected one of {COMPARE_BY}")
    old, new = rows_of(old_doc), rows_of(new_doc)
    out = []
    for rid, n in new.items():
        o = old.get(rid)
        if o is None:
            out.append(Change(rid, math.nan, _num(n.get("pyconv_ms")), math.nan, math.nan, "new"))
            continue
        t_pct = 100.0 * (_num(n.get("torch_ms")) / _num(o.get("torch_ms")) - 1.0)
        if by == "time":
            a, b = _num(o.get("pyconv_ms")), _num(n.get("pyconv_ms"))
            pct = 100.0 * (b / a - 1.0)
        else:
            a, b = _num(o.get("speed_vs_torch")), _num(n.get("speed_vs_torch"))
            pct = 100.0 * (a / b - 1.0)
        status = "slower" if pct > fail_above else "ok"
        out.append(Change(rid, a, b, pct, t_pct, status))
    out += [Change(rid, _num(o.get("pyconv_ms")), math.nan, math.nan, math.nan, "gone")
            for rid, o in old.items() if rid not in new]
    return out


def table(changes: List[Change], name: str, fail_above: float, by: str):
    from rich.table import Table

    what = "pyconv ms" if by == "time" else "vs torch (x)"
    t = Table(title=f"against baseline {name!r} (by {by}; fails above +{fail_above:g}% slower)", title_justify="left")
    for c, j in (("row", "left"), (f"old {what}", "right"), (f"new {what}", "right"), ("pyconv slower by", "right"),
                 ("torch time change", "right"), ("", "left")):
        t.add_column(c, justify=j)

    def f(v, fmt, unit=""):
        return "-" if not math.isfinite(v) else format(v, fmt) + unit

    for c in sorted(changes, key=lambda c: -c.slower_pct if math.isfinite(c.slower_pct) else 1e9):
        mark = {"slower": "[red]REGRESSION[/red]", "new": "new", "gone": "not run", "ok": ""}[c.status]
        t.add_row(c.id, f(c.old, ".4g"), f(c.new, ".4g"), f(c.slower_pct, "+.1f", "%"), f(c.torch_pct, "+.1f", "%"),
                  mark)
    return t


def regressions(changes: List[Change]) -> List[Change]:
    return [c for c in changes if c.status == "slower"]


def matched(changes: List[Change]) -> int:
    return sum(c.status in ("ok", "slower") for c in changes)
