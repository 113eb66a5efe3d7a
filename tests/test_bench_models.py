"""pyconv-bench whole networks: model definitions (torchvision's layout), network rows, peers,
the per-layer breakdown and baselines. Tiny inputs and one repeat; nothing here depends on timing."""
import json
import shutil
import sys

import pytest
import torch

from pyconv.bench import baseline, breakdown, cli, models, networks, peers
from pyconv.bench.networks import NetCase, NetResult, SideTiming

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
ONE_ROW = ["--suite", "models", "--models", "cifar_resnet20", "--modes", "infer1", "--repeats", "1",
           "--warmup", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def _cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _env(_cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYCONV_CACHE_DIR", _cache_dir)
    monkeypatch.setenv("PYCONV_BENCH_DIR", str(tmp_path / "baselines"))


def _conv_bn(prefix, conv="conv", bn="bn"):
    return [f"{prefix}{conv}.weight"] + [f"{prefix}{bn}.{k}" for k in BN]


def _torchvision_resnet18_keys():
    """torchvision.models.resnet18().state_dict() keys, in order, written out from its layout."""
    keys = _conv_bn("", "conv1", "bn1")
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}."
            keys += _conv_bn(p, "conv1", "bn1") + _conv_bn(p, "conv2", "bn2")
            if layer > 1 and block == 0:
                keys += _conv_bn(p, "downsample.0", "downsample.1")
    return keys + ["fc.weight", "fc.bias"]


# ------------------------------------------------------------------------------ definitions ---

def test_resnet18_state_dict_is_torchvision_layout():
    sd = models.build("resnet18").state_dict()
    assert list(sd) == _torchvision_resnet18_keys()
    assert len(sd) == 122
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.num_batches_tracked", "fc.weight"):
        assert k in sd
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["fc.weight"].shape == (1000, 512)


def test_resnet50_mobilenet_vgg_state_dicts():
    r50 = models.build("resnet50").state_dict()
    assert len(r50) == 320
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)  # 64 -> 256 at layer1 already
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: the stride sits on the 3x3
    assert r50["layer4.2.bn3.running_var"].shape == (2048,)
    assert r50["fc.weight"].shape == (1000, 2048)
    assert sum(k.endswith("conv1.weight") for k in r50) == 17  # stem + 16 bottlenecks

    mb = models.build("mobilenet_v2").state_dict()
    assert len(mb) == 314
    shapes = {"features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_mean": (32,),
              "features.1.conv.0.0.weight": (32, 1, 3, 3),  # t=1: no expansion, depthwise first
              "features.1.conv.1.weight": (16, 32, 1, 1), "features.1.conv.2.weight": (16,),
              "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.2.conv.1.0.weight": (96, 1, 3, 3),
              "features.2.conv.2.weight": (24, 96, 1, 1), "features.2.conv.3.num_batches_tracked": (),
              "features.17.conv.2.weight": (320, 960, 1, 1), "features.18.0.weight": (1280, 320, 1, 1),
              "classifier.1.weight": (1000, 1280)}
    for k, s in shapes.items():
        assert tuple(mb[k].shape) == s, k

    # VGG-16 is big (138M parameters): its layout is checked on the meta device
    with torch.device("meta"):
        vgg = models.vgg16().state_dict()
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert list(vgg) == [f"features.{i}.{k}" for i in convs for k in ("weight", "bias")] + \
        [f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")]
    assert vgg["classifier.0.weight"].shape == (4096, 512 * 7 * 7)


def test_cifar_resnet20_is_he_et_al():
    m = models.build("cifar_resnet20")
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # + fc = 20 weighted layers
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2  # option B shortcuts at the two stage changes
    assert 0.26e6 < sum(p.numel() for p in m.parameters()) < 0.28e6  # "0.27M" in the paper


@pytest.mark.parametrize("name, hw, classes", [("cifar_resnet20", 32, 10), ("resnet18", 64, 1000),
                                               ("resnet50", 64, 1000), ("mobilenet_v2", 64, 1000)])
def test_forward_shapes(name, hw, classes):
    m = models.build(name).eval()
    with torch.inference_mode():
        assert m(torch.randn(2, 3, hw, hw)).shape == (2, classes)


def test_models_are_seeded_and_named():
    a, b = models.build("cifar_resnet20"), models.build("cifar_resnet20")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert models.get_model_spec("resnet20").name == "cifar_resnet20"
    with pytest.raises(KeyError, match="unknown model 'resnet19'"):
        models.get_model_spec("resnet19")


# ------------------------------------------------------------------------------ network rows ---

@pytest.mark.parametrize("mode", ["infer1", "train"])
def test_network_row_runs_and_checks(mode):
    r = networks.run_case(NetCase("cifar_resnet20", mode, 1 if mode == "infer1" else 2), repeats=1, warmup=0)
    assert r.status == "ok", r.note
    py = r.sides["pyconv"]
    assert r.ms("pyconv") > 0 and r.ms("torch") > 0 and r.speed("pyconv") > 0
    if mode == "train":  # gradients against a float64 step, as close as torch's own float32 ones
        tt = r.sides["torch"]
        assert 0 < tt.err < 1e-3 and py.err <= max(networks.TRAIN_FACTOR * tt.err, networks.TRAIN_FLOOR)
        assert py.loss_err < 1e-5
    else:
        assert py.err <= networks.INFER_TOL


def test_training_step_with_wrong_gradients_is_an_error(monkeypatch):
    import pyconv

    real = pyconv.convert

    def wrong(model, **kw):
        model = real(model, **kw)
        model.fc.weight.register_hook(lambda g: 2 * g)  # a gradient off by 2x
        return model

    monkeypatch.setattr(pyconv, "convert", wrong)
    r = networks.run_case(NetCase("cifar_resnet20", "train", 2), repeats=1, warmup=0)
    assert r.status == "error" and "disagrees with float64" in r.note


def test_network_row_that_disagrees_with_torch_is_an_error(monkeypatch):
    import pyconv

    real = pyconv.convert

    def wrong(model, **kw):
        model = real(model, **kw)
        with torch.no_grad():
            model.fc.bias.add_(1.0)  # a visibly different output
        return model

    monkeypatch.setattr(pyconv, "convert", wrong)
    r = networks.run_case(NetCase("cifar_resnet20", "infer1", 1), repeats=1, warmup=0)
    assert r.status == "error" and "differs from torch" in r.note


def test_models_suite_cli_writes_json_csv_plot(tmp_path, capsys):
    import importlib.util

    j, c, png = tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "m.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    assert cli.main(ONE_ROW + ["--json", str(j), "--csv", str(c)] + plot) == 0
    out = capsys.readouterr().out
    assert "whole networks" in out and "cifar_resnet20" in out and "inference b1" in out
    doc = json.loads(j.read_text())
    assert doc["machine"]["cpu"] and doc["results"] == []
    (row,) = doc["models"]
    assert row["id"] == "models/cifar_resnet20/infer1/b1" and row["status"] == "ok"
    assert row["pyconv_ms"] > 0 and row["torch_ms"] > 0 and row["speed_vs_torch"] > 0 and row["pyconv_err"] < 1e-3
    assert "pyconv_ms" in c.read_text().splitlines()[0]
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- peers ---

def test_missing_peer_is_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    why = peers.unavailable("onnxruntime")
    assert "onnxruntime is not installed" in why and "pyconv[peers]" in why
    r = networks.run_case(NetCase("cifar_resnet20", "infer1", 1), repeats=1, warmup=0, peer_names=["onnxruntime"])
    assert r.status == "ok" and r.sides["onnxruntime"].status == "skipped"
    assert cli.main(ONE_ROW + ["--peers", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "skipped onnxruntime: onnxruntime is not installed" in out


def test_compile_without_a_compiler_is_skipped(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "no C++ compiler" in peers.unavailable("compile")


def test_onnxruntime_peer_runs_inference_only():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    r = networks.run_case(NetCase("cifar_resnet20", "infer1", 1), repeats=1, warmup=0, peer_names=["onnxruntime"])
    ort = r.sides["onnxruntime"]
    assert ort.status == "ok", ort.note
    assert ort.err < 1e-4 and ort.median > 0 and ort.first > 0  # first = export + session + first run
    r = networks.run_case(NetCase("cifar_resnet20", "train", 2), repeats=1, warmup=0, peer_names=["onnxruntime"])
    assert r.sides["onnxruntime"].status == "skipped" and "inference only" in r.sides["onnxruntime"].note


def test_nnpack_peer_on_layers(tmp_path):
    j = tmp_path / "r.json"
    assert cli.main(["--suite", "tiny", "--ops", "conv2d", "--repeats", "1", "--warmup", "0", "--backends", "cpp",
                     "--peers", "nnpack", "--json", str(j)]) == 0
    rows = {r["layer"]: r for r in json.loads(j.read_text())["results"]}
    assert "grouped" in rows["tiny.dw3x3"]["nnpack_note"]  # NNPACK has no grouped convolution
    if peers.unavailable("nnpack") is None:
        r = rows["tiny.3x3"]
        assert r["nnpack_status"] == "ok" and r["nnpack_ms"] > 0 and r["nnpack_err"] < 1e-4
    else:
        assert rows["tiny.3x3"]["nnpack_status"] == "n/a"


# ------------------------------------------------------------------------------- breakdown ---

def _call(name, kind, owners=()):
    return breakdown.Call(name, kind, "1x1", 1e-3, 1e-3, frozenset(owners))


def test_breakdown_alignment_by_parameters_not_names():
    # torch: a BasicBlock with a downsample; pyconv fused conv-BN(-ReLU) chains, the residual
    # add + ReLU into conv2's chain, and runs the downsample chain first (its input to the add)
    tc = [_call("conv1", "Conv2d", ["conv1"]), _call("bn1", "BatchNorm2d", ["bn1"]), _call("relu", "ReLU"),
          _call("conv2", "Conv2d", ["conv2"]), _call("bn2", "BatchNorm2d", ["bn2"]),
          _call("down.0", "Conv2d", ["down.0"]), _call("down.1", "BatchNorm2d", ["down.1"]), _call("relu", "ReLU"),
          _call("pool", "MaxPool2d"), _call("fc", "Linear", ["fc"])]
    pc = [_call("conv1_fused", "FusedConv", ["conv1", "bn1"]), _call("down_0_fused", "FusedConv",
                                                                      ["down.0", "down.1"]),
          _call("conv2_fused", "FusedConv", ["conv2", "bn2"]), _call("pool", "MaxPool2d"),
          _call("extra", "Identity"), _call("fc", "Linear", ["fc"])]
    groups = {tuple(p): sorted(t) for p, t in breakdown._align(pc, tc)}
    assert groups == {(0,): [0, 1, 2], (1,): [5, 6], (2,): [3, 4, 7], (3,): [8], (4,): [], (5,): [9]}
    assert breakdown._label(["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"]) == "layer1.0.conv1+bn1+relu"


def test_breakdown_cifar_resnet20(capsys):
    bd = breakdown.run("cifar_resnet20", "train", batch=2, repeats=1, warmup=0)
    by = {r.layer: r for r in bd.rows}
    assert by["conv1+bn1+relu"].kind == "Conv2d+BatchNorm2d+ReLU"  # fused or not, the three torch layers
    assert any(r.layer.startswith("layer2.0.downsample.0") for r in bd.rows) and "fc" in by
    convs = [r for r in bd.rows if r.kind.startswith("Conv2d")]
    assert len(convs) == 21  # every conv of the network, each once
    for r in convs:  # timed on both sides, both passes
        assert all(v > 0 for v in (r.torch_fwd, r.pyconv_fwd, r.torch_bwd, r.pyconv_bwd)), r
    assert [r.lost for r in bd.rows] == sorted((r.lost for r in bd.rows), reverse=True)
    assert cli.main(["--breakdown", "resnet20", "--batch", "2", "--repeats", "1", "--warmup", "0",
                     "--modes", "train,infer1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "where the time goes" in out and "loses in" in out and "conv1+bn1+relu" in out


# -------------------------------------------------------------------------------- baselines ---

def _fake_net_run(pyconv_s, torch_s=0.010):
    def run_case(case, repeats, warmup=1, threads=1, peer_names=(), base=None):
        sides = {"torch": SideTiming("torch", "ok", median=torch_s, min=torch_s, first=torch_s),
                 "pyconv": SideTiming("pyconv", "ok", median=pyconv_s, min=pyconv_s, first=pyconv_s, err=0.0)}
        return NetResult(case, "ok", "", sides)
    return run_case


def test_compare_detects_a_planted_slowdown(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(networks, "run_case", _fake_net_run(0.010))
    assert cli.main(ONE_ROW + ["--save", "base"]) == 0
    assert (tmp_path / "baselines" / "base.json").exists()
    capsys.readouterr()

    monkeypatch.setattr(networks, "run_case", _fake_net_run(0.012))  # 20% slower
    assert cli.main(ONE_ROW + ["--compare", "base", "--fail-above", "10"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "models/cifar_resnet20/infer1/b1" in out and "+20.0%" in out

    monkeypatch.setattr(networks, "run_case", _fake_net_run(0.0105))  # 5%: within the threshold
    assert cli.main(ONE_ROW + ["--compare", "base", "--fail-above", "10"]) == 0
    assert "none slower" in capsys.readouterr().out

    # the machine got 20% slower for both sides alike: not a regression by speed relative to torch
    monkeypatch.setattr(networks, "run_case", _fake_net_run(0.012, torch_s=0.012))
    assert cli.main(ONE_ROW + ["--compare", "base", "--compare-by", "vs-torch"]) == 0
    assert cli.main(ONE_ROW + ["--compare", "base"]) == 1


def test_compare_layer_rows_and_missing_baseline(capsys, tmp_path):
    old = {"results": [{"id": "tiny/tiny.3x3/conv2d/cpp/auto/float32/b1", "status": "ok", "pyconv_ms": 1.0,
                        "torch_ms": 1.0, "speed_vs_torch": 1.0},
                       {"id": "tiny/gone", "status": "ok", "pyconv_ms": 1.0}]}
    new = {"results": [{"id": "tiny/tiny.3x3/conv2d/cpp/auto/float32/b1", "status": "ok", "pyconv_ms": 1.25,
                        "torch_ms": 1.0, "speed_vs_torch": 0.8},
                       {"id": "tiny/new", "status": "ok", "pyconv_ms": 1.0}]}
    changes = {c.id: c for c in baseline.compare(old, new, 10.0)}
    assert changes["tiny/tiny.3x3/conv2d/cpp/auto/float32/b1"].status == "slower"
    assert changes["tiny/tiny.3x3/conv2d/cpp/auto/float32/b1"].slower_pct == pytest.approx(25.0)
    assert changes["tiny/new"].status == "new" and changes["tiny/gone"].status == "gone"
    assert [c.status for c in baseline.compare(old, new, 30.0) if c.id.endswith("b1")] == ["ok"]
    path = baseline.save(str(tmp_path / "x.json"), old)
    assert baseline.load(path) == old
    assert cli.main(ONE_ROW + ["--compare", "nosuch"]) == 2
    assert "no baseline 'nosuch'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ command line ---

def _plan(argv):
    return cli._resolve_args(cli.build_parser().parse_args(argv))


def test_default_quick_suite_shows_auto_and_one_network():
    p = _plan([])
    assert [s.name for s in p.layer_suites] == ["quick"] and p.algos == ["auto"]
    assert p.backends == cli._auto_backends() and "cpp" in p.backends
    assert p.model_names == ["cifar_resnet20"] and p.modes == ["infer1", "train"]
    assert _plan(["--algos"]).algos == list(cli.DEFAULT_ALGOS)  # the algorithm-by-algorithm tables
    assert _plan(["--algos", "direct"]).algos == ["direct"]
    assert _plan(["--ops", "conv2d"]).model_names == []  # a narrowed layer run has no network row
    m = _plan(["--suite", "models", "--peers", "onnxruntime,nnpack"])
    assert m.layer_suites == [] and m.model_names == list(models.MODELS) and m.modes == list(networks.MODES)
    assert m.model_peers == ["onnxruntime"] and m.layer_peers == ["nnpack"]


@pytest.mark.parametrize("argv, needle", [
    (["--suite", "models", "--models", "resnet19"], "unknown model 'resnet19'"),
    (["--suite", "models", "--modes", "infer2"], "unknown mode 'infer2'"),
    (["--peers", "tensorrt"], "unknown peer 'tensorrt'"),
    (["--breakdown", "alexnet"], "unknown model 'alexnet'"),
])
def test_usage_errors(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
