"""The Winograd matrices live in one table (pyconv.problem.WINOGRAD): the table is the right
transform, the checked-in C++/CUDA header is what the generator writes from it, and the numba
kernels' float64 matrices are its values."""
import importlib.util
import random
from fractions import Fraction
from pathlib import Path

import pytest

from pyconv.problem import WINOGRAD

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_winograd_header", ROOT / "scripts" / "gen_winograd_header.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mul(a, b):
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0)) for j in range(len(b[0]))]
            for i in range(len(a))]


def _t(a):
    return [list(col) for col in zip(*a)]


def test_header_is_generated_from_the_table():
    gen = _generator()
    header = gen.HEADER.read_text()
    assert gen.render(WINOGRAD) == header, "the header is stale: run python scripts/gen_winograd_header.py"
    # Each C expression is the double nearest the exact value (what float(Fraction) gives).
    for t in WINOGRAD.values():
        for mat in (t.BT, t.G, t.AT):
            for v in (v for row in mat for v in row):
                assert eval(gen.c_value(v)) == float(v), v


@pytest.mark.parametrize("m", sorted(WINOGRAD))
def test_table_computes_the_valid_correlation(m):
    """In exact arithmetic, A^T [(G g G^T) . (B^T d B)] A is the valid 3x3 correlation of the alpha x alpha
    tile d with g."""
    t = WINOGRAD[m]
    alpha = m + 2
    assert t.m == m and len(t.points) == alpha - 1
    shapes = [(len(x), len(x[0])) for x in (t.BT, t.G, t.AT)]
    assert shapes == [(alpha, alpha), (alpha, 3), (m, alpha)]
    BT, G, AT = (list(map(list, x)) for x in (t.BT, t.G, t.AT))
    rng = random.Random(m)
    for _ in range(5):
        d = [[Fraction(rng.randint(-9, 9)) for _ in range(alpha)] for _ in range(alpha)]
        g = [[Fraction(rng.randint(-9, 9)) for _ in range(3)] for _ in range(3)]
        U = _mul(_mul(G, g), _t(G))
        V = _mul(_mul(BT, d), _t(BT))
        Y = _mul(_mul(AT, [[U[i][j] * V[i][j] for j in range(alpha)] for i in range(alpha)]), _t(AT))
        want = [[sum(d[i + r][j + s] * g[r][s] for r in range(3) for s in range(3)) for j in range(m)]
                for i in range(m)]
        assert Y == want


def test_numba_matrices_are_the_table():
    pytest.importorskip("numba")
    import numpy as np

    from pyconv.kernels.cpu.winograd import MATRICES

    assert sorted(MATRICES) == sorted(WINOGRAD)
    for m, t in WINOGRAD.items():
        for have, exact in zip(MATRICES[m], (t.BT, t.G, t.AT)):
            assert have.dtype == np.float64
            assert have.tolist() == [[float(v) for v in row] for row in exact]
