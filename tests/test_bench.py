"""pyconv-bench CLI: runs on the tiny suite in seconds and writes table, JSON, CSV; filters; errors."""
import csv
import importlib.util
import json
import runpy
import sys

import pytest

from pyconv import backends
from pyconv.problem import pass_algos

from pyconv.bench import cli, suites
from pyconv.bench.runner import OPS, Case, run_case
from pyconv.bench.suites import ConvLayer

FAST = ["--suite", "tiny", "--repeats", "1", "--warmup", "0", "--backends", "cpp"]


@pytest.fixture(scope="module")
def _cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _cache(_cache_dir, monkeypatch):
    # one cache for the module: the machine peak is measured once
    monkeypatch.setenv("PYCONV_CACHE_DIR", _cache_dir)


def test_tiny_suite_table_json_csv_plot(tmp_path, capsys):
    j, c, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    rc = cli.main(FAST + ["--ops", "conv2d,conv2d_train,max_pool2d", "--json", str(j), "--csv", str(c)] + plot)
    out = capsys.readouterr().out
    assert rc == 0
    assert "suite tiny" in out and "tiny.3x3" in out and "vs torch" in out and "geomean" in out
    doc = json.loads(j.read_text())
    assert doc["machine"]["cpu"] and doc["machine"]["torch"]
    assert doc["peaks"][0]["gflops"] > 0 and doc["peaks"][0]["gbs"] > 0
    ran = [r for r in doc["results"] if r["status"] == "ok"]
    assert {r["op"] for r in ran} >= {"conv2d", "conv2d_train"}
    for r in ran:
        if r["op"].startswith("conv"):
            # the default shows what users get: algo="auto", labelled with the algorithm it ran (a
            # training case may run a "<forward>/<backward>" plan)
            assert r["algo"] == "auto" and r["backend"] == "cpp"
            assert set(pass_algos(r["picked"])) <= set(backends.load("cpp").conv_algos)
        assert r["pyconv_ms"] > 0 and r["torch_ms"] > 0 and r["speed_vs_torch"] > 0
        assert r["max_err"] < 1e-4  # matches the float64 reference
    # every case is reported: ran or skipped with a reason
    assert all(r["status"] in ("ok", "skipped") for r in doc["results"])
    assert all(r["note"] for r in doc["results"] if r["status"] == "skipped")
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == len(doc["results"])
    assert {"layer", "op", "algo", "pyconv_ms", "speed_vs_torch", "max_err"} <= set(rows[0])
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_filters(tmp_path):
    j = tmp_path / "r.json"
    rc = cli.main(FAST + ["--ops", "conv2d", "--algos", "direct", "--layers", "*dw*", "--batch", "2",
                          "--json", str(j)])
    assert rc == 0
    res = json.loads(j.read_text())["results"]
    assert len(res) == 1
    r = res[0]
    assert (r["op"], r["algo"], r["backend"], r["layer"], r["batch"]) == ("conv2d", "direct", "cpp", "tiny.dw3x3", 2)
    assert r["shape"].startswith("2x8x12x12")


def test_not_implemented_is_skipped_with_note(tmp_path):
    j = tmp_path / "r.json"
    rc = cli.main(["--suite", "tiny", "--repeats", "1", "--ops", "conv2d", "--layers", "tiny.1x1s2",
                   "--algos", "winograd_4x4,direct", "--backends", "cpp,numba", "--json", str(j)])
    assert rc == 0
    res = json.loads(j.read_text())["results"]
    by = {(r["algo"], r["backend"]): r for r in res}
    assert by[("direct", "cpp")]["status"] == "ok"
    assert by[("winograd_4x4", "cpp")]["status"] == "skipped"
    assert "3x3" in by[("winograd_4x4", "cpp")]["note"]  # not applicable to a 1x1 layer, and says why
    assert by[("direct", "numba")]["status"] in ("ok", "skipped")


@pytest.mark.parametrize("argv, needle", [
    (["--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["--ops", "conv3d"], "unknown op 'conv3d'"),
    (["--algos", "fft"], "unknown algorithm 'fft'"),
    (["--backends", "tpu"], "unknown backend 'tpu'"),
    (["--dtype", "float16"], "unknown dtype 'float16'"),
    (["--repeats", "0"], "--repeats=0"),
    (["--suite", "tiny", "--layers", "zzz*"], "no case matches"),
])
def test_usage_errors(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unknown_suite_lists_the_known_ones(capsys):
    assert cli.main(["--suite", "resnet1"]) == 2
    err = capsys.readouterr().err
    for name in ("quick", "resnet18", "resnet50", "vgg16", "mobilenet", "cifar"):
        assert name in err


def test_explain_names_the_rule(capsys):
    assert cli.main(["--suite", "tiny", "--explain", "--backends", "cpp"]) == 0
    out = capsys.readouterr().out
    assert "tiny.dw3x3" in out and "depthwise" in out


def test_suites_are_well_formed():
    for name in ("quick", "resnet18", "resnet50", "vgg16", "mobilenet", "mobilenet_v2", "cifar"):
        s = suites.get_suite(name)
        assert s.layers and len({lay.name for lay in s.layers}) == len(s.layers)
        for lay in suites.conv_layers(s):
            assert lay.C % lay.groups == 0 and lay.K % lay.groups == 0 and min(lay.out_hw()) >= 1
    mob = suites.conv_layers(suites.get_suite("mobilenet"))
    assert any(lay.groups == lay.C > 1 for lay in mob) and any((lay.R, lay.S) == (1, 1) for lay in mob)


def test_failing_kernel_is_an_error_row_not_a_crash(monkeypatch):
    import pyconv.functional as PF

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(PF, "conv2d", broken)
    layer = ConvLayer("x", 4, 6, 6, 4, 3, 3, 1, 1)
    case = Case("tiny", "conv2d", layer, "direct", "cpp", __import__("torch").float32, 1)
    r = run_case(case, repeats=1)
    assert r.status == "error" and "kernel exploded" in r.note


def test_python_dash_m_entry_point(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pyconv-bench", "--list"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("pyconv.bench", run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "mobilenet" in out


def test_every_op_has_a_layer_kind():
    assert set(OPS) == {"conv2d", "conv2d_train", "conv2d_infer", "max_pool2d", "avg_pool2d", "batch_norm",
                        "conv_bn_relu"}


def test_every_op_runs_once_its_function_exists(monkeypatch):
    """The harness for ops other helpers are still writing: stand-ins built from torch (here, in the
    test only) must go through bind/check/timing cleanly, errors near zero."""
    import torch
    import torch.nn.functional as F

    import pyconv.functional as PF

    monkeypatch.setattr(PF, "max_pool2d", lambda x, k, s, p, backend: F.max_pool2d(x, k, s, p), raising=False)
    monkeypatch.setattr(PF, "avg_pool2d", lambda x, k, s, p, backend: F.avg_pool2d(x, k, s, p), raising=False)
    monkeypatch.setattr(PF, "batch_norm", lambda x, rm, rv, w, b, tr, mom, eps, backend:
                        F.batch_norm(x, rm, rv, w, b, tr, mom, eps), raising=False)

    def cbr(x, w, b, bw, bb, rm, rv, st, pad, dil, g, tr, mom, eps, algo, backend):
        return F.relu(F.batch_norm(F.conv2d(x, w, b, st, pad, dil, g), rm, rv, bw, bb, tr, mom, eps))

    monkeypatch.setattr(PF, "conv_bn_relu", cbr, raising=False)
    tiny = suites.get_suite("tiny")
    conv = suites.conv_layers(tiny)[0]
    for op, layer in (("max_pool2d", suites.pool_layers(tiny, "max")[0]),
                      ("avg_pool2d", suites.pool_layers(tiny, "avg")[0]),
                      ("batch_norm", conv), ("conv_bn_relu", conv)):
        algo = "direct" if op == "conv_bn_relu" else "-"
        r = run_case(Case("tiny", op, layer, algo, "cpp", torch.float32, 2), repeats=1)
        assert r.status == "ok", (op, r.note)
        assert r.err_pyconv < 1e-5 and r.t_pyconv > 0 and r.work > 0
        assert r.unit == ("GFLOP/s" if op == "conv_bn_relu" else "GB/s")
