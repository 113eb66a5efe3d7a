"""The import graph follows the layering of pyconv/problem.py's docstring: no circles, nothing from
kernels/ or the contract module up into policy, the backends below autotune and the ops."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# module name -> source file; kernels/ installs as pyconv.kernels
FILES = {}
for base, pkg in ((ROOT / "pyconv", "pyconv"), (ROOT / "kernels", "pyconv.kernels")):
    for f in base.rglob("*.py"):
        parts = list(f.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        FILES[".".join([pkg] + parts)] = f


def _imports(name: str, path: Path):
    """The pyconv modules a module imports (at any depth of its code: a deferred import is still an
    arrow). `from pkg import mod` names the submodule where one exists."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in FILES:
                    out.add(sub)
                elif not a.name.startswith("_C"):  # pyconv._C*: the compiled extensions, at the kernel floor
                    out.add(mod)
    return {m for m in out if m in FILES and m != name}


GRAPH = {name: _imports(name, path) for name, path in FILES.items()}


def _reaches(start: str, banned) -> list:
    """Modules of `banned` reachable from start."""
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return sorted(m for m in seen if any(m == b or m.startswith(b + ".") for b in banned))


def test_graph_is_read():
    assert "pyconv.problem" in GRAPH["pyconv.backends.cpp"]
    assert "pyconv.kernels.cuda.winograd" in GRAPH["pyconv.kernels.cuda.host"]


@pytest.mark.parametrize("name", sorted(n for n in FILES if n != "pyconv"))
def test_no_import_circle(name):
    # the package facade (pyconv/__init__) imports every floor; it is not part of any floor
    assert name not in _reaches(name, [name]) or name == "pyconv", f"{name} imports itself through {GRAPH[name]}"


def test_contract_module_imports_nothing_from_pyconv():
    assert GRAPH["pyconv.problem"] == set()


POLICY = ["pyconv.autotune", "pyconv.ops", "pyconv.functional", "pyconv.nn", "pyconv.convert", "pyconv.bench",
          "pyconv.backends", "pyconv._args"]


@pytest.mark.parametrize("name", sorted(n for n in FILES if n.startswith("pyconv.kernels")))
def test_kernels_import_only_the_contract(name):
    assert _reaches(name, POLICY) == []


@pytest.mark.parametrize("name", sorted(n for n in FILES if n.startswith("pyconv.backends")))
def test_backends_sit_below_policy(name):
    assert _reaches(name, ["pyconv.autotune", "pyconv.ops", "pyconv.functional", "pyconv.nn", "pyconv.convert",
                           "pyconv.bench"]) == []


def test_one_file_names_the_algorithms():
    """The algorithm names are spelled as a tuple in pyconv/problem.py only."""
    spelled = [str(p.relative_to(ROOT)) for p in FILES.values()
               if '"direct", "im2col"' in p.read_text() or "'direct', 'im2col'" in p.read_text()]
    assert spelled == ["pyconv/problem.py"]
