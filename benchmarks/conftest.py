"""pytest-benchmark suites (not part of the test run: pyproject's testpaths = tests).

PYCONV_BENCH_SUITE picks the layer suite (default quick), PYCONV_BENCH_BATCH the batch size.
Every case is parametrized over impl = torch or backend/algo, so the groups line them up."""
import os

import pytest
import torch

import pyconv
from pyconv import autotune, backends, problem
from pyconv.bench import runner, suites

SUITE = suites.get_suite(os.environ.get("PYCONV_BENCH_SUITE", "quick"))
BATCH = int(os.environ.get("PYCONV_BENCH_BATCH", "0")) or SUITE.batch
ALGOS = [a for a in problem.CONV_ALGOS if a not in ("auto", "winograd")]


def impls(op):
    """'torch' plus every backend[/algo] pair (unavailable ones are skipped at run time, with why)."""
    out = ["torch"]
    for be in backends.REGISTRY:
        out += [f"{be}/{a}" for a in ALGOS] if op in runner.CONV_OPS else [be]
    return out


def run(benchmark, op, layer, impl, dtype=torch.float32):
    if impl == "torch":
        be, algo = "cpp", ("direct" if op in runner.CONV_OPS else "-")
    else:
        be, _, algo = impl.partition("/")
        algo = algo or "-"
    case = runner.Case(SUITE.name, op, layer, algo, be, dtype, BATCH)
    if impl != "torch":
        why = runner.unavailable(op, algo, be, layer, BATCH)
        if why:
            pytest.skip(f"{why[0]}: {why[1]}")
    elif not pyconv.available_backends():
        pytest.skip("no pyconv backend to build the case with")
    bound = runner.bind(case)
    fn = bound.run_torch if impl == "torch" else bound.run_pyconv
    benchmark.group = f"{op} {layer.name} {layer.describe(BATCH)}"
    benchmark.extra_info.update(unit=bound.unit, work=bound.work, threads=torch.get_num_threads())
    with torch.no_grad():
        benchmark(fn)
    med = benchmark.stats.stats.median
    benchmark.extra_info["rate"] = bound.work / med / 1e9 if med else None
