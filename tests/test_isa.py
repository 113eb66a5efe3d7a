"""The kernels are compiled once per instruction set (generic, avx2, avx512: csrc/cpu/isa.h) and
the best one the CPU has runs. The rest of the suite tests that one; here the kernel tests run again
under each lower vector ISA the CPU also has (PYCONV_ISA), so an AVX-512 machine covers the AVX2
kernels (a width of 8 floats instead of 16, the assembly micro-kernels) as well. The portable
build has its own subset in each kernel file (test_generic_isa_matches_torch)."""
import os
import subprocess
import sys

import pytest

from pyconv._config import ISA_NAMES

ORDER = list(ISA_NAMES)  # lowest first
HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_TESTS = ["test_conv2d.py", "test_conv_blocked.py", "test_winograd.py", "test_conv_im2col.py", "test_gemm.py",
                "test_prepared.py", "test_pool.py", "test_batch_norm.py", "test_conv_bn_relu.py", "test_grad_bias.py",
                "test_sizes.py"]


def _isa_in(env_isa):
    code = "import pyconv; print(pyconv._C.isa())"
    env = dict(os.environ, PYCONV_ISA=env_isa)
    env.pop("PYCONV_FORCE_GENERIC", None)
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_pyconv_isa_selects_and_never_exceeds_the_cpu():
    best = _isa_in("")
    assert best in ORDER
    for isa in ORDER:
        assert _isa_in(isa) == (isa if ORDER.index(isa) <= ORDER.index(best) else best)
    assert _isa_in("no-such-isa") == best


@pytest.mark.parametrize("isa", ["avx2"])
def test_kernel_tests_pass_under_a_lower_isa(isa):
    best = _isa_in("")
    if ORDER.index(isa) >= ORDER.index(best):
        pytest.skip(f"{isa} is this CPU's best instruction set ({best}): the whole suite runs it")
    env = dict(os.environ, PYCONV_ISA=isa)
    env.pop("PYCONV_FORCE_GENERIC", None)
    code = f"import pyconv, sys; assert pyconv._C.isa() == {isa!r}; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    args = ["-x", "-q", "-p", "no:cacheprovider", "-k", "not numba and not cuda"] + [
        os.path.join(HERE, f) for f in KERNEL_TESTS]
    r = subprocess.run([sys.executable, "-c", code] + args, env=env, cwd=HERE, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_an_unknown_pyconv_isa_warns():
    env = dict(os.environ, PYCONV_ISA="avx9000")
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import pyconv"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "PYCONV_ISA='avx9000'" in r.stderr
