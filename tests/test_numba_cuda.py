"""The numba_cuda backend. Its checks (tests/numba_cuda_checks.py) run in a subprocess: under Numba's
CUDA simulator everywhere (NUMBA_ENABLE_CUDASIM must be set before numba is first imported, and
importing pyconv imports numba), and on a real GPU when there is one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyconv import backends, problem

HERE = Path(__file__).parent


def run_checks(simulator: bool, timeout: int):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(HERE / "numba_cuda_checks.py")]
    r = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"numba_cuda checks failed (simulator={simulator}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]


def test_table():
    mod = backends.load("numba_cuda")
    assert isinstance(mod, backends.Backend)
    assert mod.conv_algos == problem.CONV_ALGOS
    for name in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "max_pool2d_forward",
                 "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "batch_norm_forward",
                 "batch_norm_backward", "activation_forward", "relu_backward"):
        assert callable(getattr(mod, name)), name
    assert mod.is_available() == ("numba_cuda" in backends.available_backends())
    if not mod.is_available():
        assert mod.unavailable_reason()


def test_kernels_under_simulator():
    run_checks(simulator=True, timeout=600)


@pytest.mark.gpu
def test_kernels_on_gpu():
    run_checks(simulator=False, timeout=900)
