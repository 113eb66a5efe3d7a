"""ptxas resource usage of the hot CUDA kernels: no register spills (a spill turns the register-
blocked accumulators of the implicit GEMM into local-memory traffic). Compiles csrc/cuda/conv.cu with
`nvcc --resource-usage` for sm_90; skipped where nvcc is absent. Needs no GPU."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ptxas_report", ROOT / "scripts" / "ptxas_report.py")
ptxas_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptxas_report)

HOT = ("conv_igemm_kernel", "conv_direct_fprop_kernel", "conv_direct_dgrad_kernel", "conv_direct_wgrad_kernel",
       "splitk_sum_kernel", "conv_bias_grad_kernel", "conv_direct_fprop_stats_kernel", "conv_stats_sum_kernel",
       "winograd_filter_kernel", "winograd_input_kernel", "winograd_output_kernel", "winograd_grad_output_kernel",
       "winograd_filter_grad_kernel")


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


def test_hot_conv_kernels_do_not_spill(conv_rows):
    hot = [r for r in conv_rows if any(h in r["kernel"] for h in HOT)]
    # 10 implicit-GEMM instantiations (fprop, fprop with stats, dgrad, wgrad, the Winograd GEMM; x 2
    # dtypes) + 7 other conv kernels x 2 dtypes + the stats sum (float64 only) + Winograd transforms x 2
    # tiles x 2 dtypes: filter, output, grad-output, filter-grad, and the input transform in two layouts.
    assert len(hot) == 49, [r["kernel"] for r in conv_rows]
    spilled = [f"{r['kernel']}: {r['spill_stores']} B stores / {r['spill_loads']} B loads" for r in hot
               if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
    assert all(r["registers"] <= 255 for r in hot)
