"""ptxas resource usage of the hot CUDA kernels: no register spills (a spill turns the register-
blocked accumulators of the implicit GEMM into local-memory traffic) and registers within a budget
per kernel (more registers, fewer resident blocks). Compiles csrc/cuda/conv.cu with
`nvcc --resource-usage` for sm_90; skipped where nvcc is absent. Needs no GPU."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ptxas_report", ROOT / "scripts" / "ptxas_report.py")
ptxas_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptxas_report)

# Register budget of each hot kernel instantiation on sm_90: today's count (nvcc 13.0, in the comment)
# plus max(8, 1/8 of it), rounded up to ptxas's allocation unit of 8, so a change that bloats a kernel
# (a coefficient no longer folded, an accumulator tile that grew) fails here; the implicit-GEMM kernels
# at most 128, which keeps two 256-thread blocks per SM. When a kernel changes on purpose, re-measure
# (python scripts/ptxas_report.py --arch sm_90) and update its line.
REGISTER_BUDGET = {
    "conv_bias_grad_kernel<double>": 40,  # 32
    "conv_bias_grad_kernel<float>": 40,  # 32
    "conv_direct_dgrad_kernel<double>": 88,  # 78
    "conv_direct_dgrad_kernel<float>": 80,  # 70
    "conv_direct_fprop_kernel<double>": 64,  # 54
    "conv_direct_fprop_kernel<float>": 64,  # 56
    "conv_direct_fprop_stats_kernel<double, false>": 48,  # 36
    "conv_direct_fprop_stats_kernel<double, true>": 88,  # 78
    "conv_direct_fprop_stats_kernel<float, false>": 48,  # 36
    "conv_direct_fprop_stats_kernel<float, true>": 88,  # 72
    "conv_direct_wgrad_kernel<double>": 64,  # 56
    "conv_direct_wgrad_kernel<float>": 64,  # 56
    "conv_igemm_kernel<double, DgradProblem<double> >": 128,  # 124
    "conv_igemm_kernel<double, FpropProblem<double> >": 128,  # 126
    "conv_igemm_kernel<double, FpropStatsProblem<double> >": 112,  # 98
    "conv_igemm_kernel<double, WgradProblem<double> >": 128,  # 124
    "conv_igemm_kernel<double, WinogradGemm<double> >": 88,  # 76
    "conv_igemm_kernel<float, DgradProblem<float> >": 112,  # 94
    "conv_igemm_kernel<float, FpropProblem<float> >": 104,  # 92
    "conv_igemm_kernel<float, FpropStatsProblem<float> >": 88,  # 78
    "conv_igemm_kernel<float, WgradProblem<float> >": 104,  # 92
    "conv_igemm_kernel<float, WinogradGemm<float> >": 56,  # 48
    "conv_stats_sum_kernel<double>": 40,  # 32
    "splitk_sum_kernel<double>": 40,  # 32
    "splitk_sum_kernel<float>": 40,  # 30
    "winograd_filter_grad_kernel<double, 2>": 112,  # 96
    "winograd_filter_grad_kernel<double, 4>": 240,  # 207
    "winograd_filter_grad_kernel<float, 2>": 96,  # 80
    "winograd_filter_grad_kernel<float, 4>": 192,  # 167
    "winograd_filter_kernel<double, 2>": 48,  # 40
    "winograd_filter_kernel<double, 4>": 64,  # 56
    "winograd_filter_kernel<float, 2>": 48,  # 38
    "winograd_filter_kernel<float, 4>": 48,  # 40
    "winograd_grad_output_kernel<double, 2>": 40,  # 32
    "winograd_grad_output_kernel<double, 4>": 72,  # 64
    "winograd_grad_output_kernel<float, 2>": 40,  # 32
    "winograd_grad_output_kernel<float, 4>": 48,  # 40
    "winograd_input_kernel<double, 2, false>": 56,  # 48
    "winograd_input_kernel<double, 2, true>": 56,  # 48
    "winograd_input_kernel<double, 4, false>": 112,  # 96
    "winograd_input_kernel<double, 4, true>": 112,  # 96
    "winograd_input_kernel<float, 2, false>": 48,  # 40
    "winograd_input_kernel<float, 2, true>": 48,  # 40
    "winograd_input_kernel<float, 4, false>": 64,  # 56
    "winograd_input_kernel<float, 4, true>": 64,  # 56
    "winograd_output_kernel<double, 2>": 48,  # 40
    "winograd_output_kernel<double, 4>": 88,  # 72
    "winograd_output_kernel<float, 2>": 40,  # 32
    "winograd_output_kernel<float, 4>": 56,  # 47
}
HOT = {name.split("<")[0] for name in REGISTER_BUDGET}


def short_name(kernel):
    """'void pyconv::kern::f<float, pyconv::kern::P<float> >(args)' -> 'f<float, P<float> >'."""
    name = kernel.split("(")[0]
    name = name[len("void "):] if name.startswith("void ") else name
    return name.replace("pyconv::kern::", "").replace("pyconv::", "")


def problems(rows):
    """What is wrong with the hot kernels among ptxas rows: spills, registers over budget."""
    out = []
    for r in rows:
        name = short_name(r["kernel"])
        if name.split("<")[0] not in HOT:
            continue
        if r["spill_stores"] or r["spill_loads"]:
            out.append(f"{name}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
        budget = REGISTER_BUDGET.get(name)
        if budget is None:
            out.append(f"{name}: no register budget (add it to REGISTER_BUDGET)")
        elif r["registers"] > budget:
            out.append(f"{name}: {r['registers']} registers, budget {budget}")
    return out


@pytest.fixture(scope="module")
def conv_rows():
    if ptxas_report.find_nvcc() is None:
        pytest.skip("nvcc not found")
    return ptxas_report.compile_report(("sm_90",), [ROOT / "csrc" / "cuda" / "conv.cu"])


def test_parser_reads_ptxas_lines():
    text = """ptxas info    : Compiling entry function '_ZN6pyconv4kern1fEv' for 'sm_90'
ptxas info    : Function properties for _ZN6pyconv4kern1fEv
    24 bytes stack frame, 20 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 24 bytes cumulative stack size, 4096 bytes smem
"""
    (row,) = ptxas_report.parse(text)
    assert (row["registers"], row["spill_stores"], row["spill_loads"], row["smem"]) == (80, 20, 36, 4096)
    assert "pyconv::kern::f" in row["kernel"]


def test_budget_check_reports_spills_and_bloat():
    row = {"kernel": "void pyconv::kern::winograd_input_kernel<float, 4, false>(pyconv::kern::WinogradConv)",
           "registers": 64, "spill_stores": 0, "spill_loads": 0}
    assert problems([row]) == []
    assert problems([dict(row, registers=65)]) == ["winograd_input_kernel<float, 4, false>: 65 registers, budget 64"]
    assert "spills" in problems([dict(row, spill_loads=4)])[0]
    new = dict(row, kernel="void pyconv::kern::winograd_input_kernel<half, 4>()")
    assert "no register budget" in problems([new])[0]


def test_hot_conv_kernels_fit_their_register_budget_and_do_not_spill(conv_rows):
    hot = [r for r in conv_rows if short_name(r["kernel"]).split("<")[0] in HOT]
    # 10 implicit-GEMM instantiations (fprop, fprop with stats, dgrad, wgrad, the Winograd GEMM; x 2
    # dtypes) + 7 other conv kernels x 2 dtypes + the stats sum (float64 only) + Winograd transforms x 2
    # tiles x 2 dtypes: filter, output, grad-output, filter-grad, and the input transform in two layouts.
    assert len(hot) == 49, [r["kernel"] for r in conv_rows]
    assert {short_name(r["kernel"]) for r in hot} == set(REGISTER_BUDGET)
    bad = problems(hot)
    assert not bad, "\n".join(bad)
