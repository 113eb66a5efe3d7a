#!/usr/bin/env python3
"""Registers, spills and shared memory of every CUDA kernel, as ptxas reports them.

Compiles each csrc/cuda/*.cu with `nvcc --resource-usage` (= -Xptxas -v) for the given
architectures and parses ptxas's per-function lines. Usage:
    python scripts/ptxas_report.py [--arch sm_80 --arch sm_90] [--json out.json]
Used by tests/test_cuda_ptxas.py, which fails when a hot kernel spills.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"

_FUNC = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def find_nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def demangle(names):
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def parse(text: str):
    """ptxas -v output -> [{kernel, arch, registers, spill_stores, spill_loads, stack, smem}]."""
    rows, cur = [], None
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "registers": None, "spill_stores": 0,
                   "spill_loads": 0, "stack": 0, "smem": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            sm = _SMEM.search(line)
            cur["smem"] = int(sm.group(1)) if sm else 0
    names = demangle([r["mangled"] for r in rows])
    for r in rows:
        r["kernel"] = names[r.pop("mangled")]
    return rows


def compile_report(archs=("sm_80", "sm_90"), sources=None, nvcc=None):
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found")
    sources = sources or sorted(CUDA_DIR.glob("*.cu"))
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            cmd = [nvcc, "-std=c++17", "-O3", "--resource-usage", f"-I{ROOT / 'csrc'}", *gencode, "-c", str(src),
                   "-o", str(Path(tmp) / (Path(src).stem + ".o"))]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"nvcc failed on {src}:\n{res.stderr}")
            for r in parse(res.stdout + res.stderr):
                r["source"] = Path(src).name
                rows.append(r)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="sm_XX (repeatable; default sm_80 and sm_90)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    rows = compile_report(tuple(args.arch or ("sm_80", "sm_90")))
    print(f"{'arch':6} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>6}  kernel")
    for r in sorted(rows, key=lambda r: (r["arch"], r["kernel"])):
        print(f"{r['arch']:6} {r['registers']:>4} {r['spill_stores']:>5}/{r['spill_loads']:<5} {r['stack']:>5} "
              f"{r['smem']:>6}  {r['kernel']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
