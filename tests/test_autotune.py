"""algo='auto': the heuristic and its explanation, and the measured mode's cache (memory + disk)."""
import json
import os
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyconv
import pyconv.functional as PF
from pyconv import _args, autotune, backends, problem


def shape_of(N, C, H, W, K, R, S, stride=1, pad=0, groups=1, dil=1):
    p = _args.ConvParams((stride, stride), (pad,) * 4, (dil, dil), groups)
    return _args.conv2d_shape_of_sizes((N, C, H, W), (K, C // groups, R, S), p)


@pytest.fixture
def measured(tmp_path, monkeypatch):
    """Measured mode with a private cache dir and a fake backend offering three algorithms whose
    timings we control; counts the timing calls."""
    monkeypatch.setenv("PYCONV_CACHE_DIR", str(tmp_path))
    autotune.clear_memory_cache()
    prev = pyconv.autotune(True)
    monkeypatch.setattr(backends.load("cpp"), "conv_algos", ("direct", "im2col", "winograd_2x2"))
    calls = []
    speed = {"direct": 3.0, "im2col": 1.0, "winograd_2x2": 2.0}

    def fake_time(algo, shape, dtype, backend, repeats=3):
        calls.append(algo)
        return speed[algo] * 1e-3

    monkeypatch.setattr(autotune, "_time_algo", fake_time)
    yield calls, speed
    pyconv.autotune(prev)
    autotune.clear_memory_cache()


# ---------------------------------------------------------------------------------- heuristic ---

def test_heuristic_rules_and_explanation(monkeypatch):
    mod = backends.load("cpp")
    monkeypatch.setattr(mod, "conv_algos", ("direct", "im2col", "winograd_4x4"))
    dw = autotune.choose_auto(shape_of(1, 32, 8, 8, 32, 3, 3, pad=1, groups=32), "cpp")
    assert dw.algo == "direct" and "depthwise" in dw.rule and dw.source == "heuristic"
    assert autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 3, 3, pad=1), "cpp").algo == "winograd_4x4"
    one = autotune.choose_auto(shape_of(1, 24, 8, 8, 144, 1, 1), "cpp")
    assert one.algo == "im2col" and "1x1" in one.rule
    # wide layers: the channel-blocked direct kernel where the backend has it (cpp from 8 output
    # channels per group), with gradients its grad-input too where that kernel takes the stride (one
    # stride-1 convolution per output phase: dilation 1, kernel >= stride), else only its forward
    # ("direct/im2col"); else GEMM
    blocked = autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 3, 3, stride=2), "cpp")
    assert blocked.algo == "direct" and "channel-blocked" in blocked.rule
    phased = autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 3, 3, stride=2), "cpp", grad=True)
    assert phased.algo == "direct/direct/im2col" and "phase" in phased.rule
    for dil, R, stride in ((2, 3, 2), (1, 2, 3)):  # dilated, or a kernel narrower than the stride
        wide = autotune.choose_auto(shape_of(1, 64, 12, 12, 64, R, R, stride=stride, dil=dil), "cpp", grad=True)
        assert wide.algo == "direct/im2col" and "wide" in wide.rule, (dil, R, stride)
    wide1 = autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 5, 5, pad=2), "cpp", grad=True)  # stride 1: grad-input too
    assert wide1.algo == "direct/direct/im2col" and "grad-input" in wide1.rule
    # fewer than 32 input channels: im2col, with or without gradients (RGB stems, 16-channel layers)
    narrow = autotune.choose_auto(shape_of(1, 7, 8, 8, 64, 5, 5, stride=2), "cpp", grad=True)  # 7 channels in
    assert narrow.algo == "im2col" and "wide" in narrow.rule and "7 < 32 input channels" in narrow.rule
    assert autotune.choose_auto(shape_of(1, 16, 8, 8, 32, 3, 3, stride=2), "cpp").algo == "im2col"
    assert autotune.choose_auto(shape_of(1, 3, 32, 32, 64, 7, 7, stride=2, pad=3), "cpp").algo == "im2col"
    assert autotune.choose_auto(shape_of(1, 32, 8, 8, 64, 3, 3, stride=2), "cpp").algo == "direct"
    few_out = autotune.choose_auto(shape_of(1, 64, 8, 8, 4, 5, 5, stride=2), "cpp", grad=True)  # 4 channels out
    assert few_out.algo == "im2col" and "wide" in few_out.rule
    assert autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 3, 3, stride=2), "numba").algo == "im2col"
    small = autotune.choose_auto(shape_of(1, 3, 8, 8, 4, 3, 3), "cpp")  # 4 channels out: no blocked kernel
    assert small.algo == "direct" and "no faster rule" in small.rule
    assert autotune.choose_auto(shape_of(1, 3, 8, 8, 4, 3, 3), "cpp", grad=True).algo == "direct"
    for grad in (False, True):  # an RGB stem: im2col, forward and gradients
        stem = autotune.choose_auto(shape_of(1, 3, 8, 8, 32, 3, 3, stride=2), "cpp", grad=grad)
        assert stem.algo == "im2col" and "short reduction" in stem.rule and "3 input channels" in stem.rule
    assert autotune.choose_auto(shape_of(1, 3, 8, 8, 16, 3, 3, pad=1), "cpp", grad=True).algo == "im2col"
    # few tiles for large transformed filters: direct at batch 1, prepared filters or not,
    # Winograd again at batch 8; with gradients the tile count decides (64 2x2 tiles)
    few = autotune.choose_auto(shape_of(1, 512, 7, 7, 512, 3, 3, pad=1), "cpp")
    assert few.algo == "direct" and "tiles" in few.rule and "channel-blocked" in few.rule
    cold = autotune.choose_auto(shape_of(1, 512, 7, 7, 512, 3, 3, pad=1), "cpp", prepared=True)
    assert cold.algo == "direct" and "prepared ones too" in cold.rule
    assert autotune.choose_auto(shape_of(1, 128, 7, 7, 128, 3, 3, pad=1), "cpp", prepared=True).algo == "winograd_4x4"
    # (prepared says nothing where gradients are taken: the filters are transformed every call)
    assert autotune.choose_auto(shape_of(1, 512, 7, 7, 512, 3, 3, pad=1), "cpp", grad=True,
                                prepared=True).algo == "direct/direct/im2col"
    assert autotune.choose_auto(shape_of(8, 512, 7, 7, 512, 3, 3, pad=1), "cpp", grad=True).algo == "winograd_4x4"
    train_few = autotune.choose_auto(shape_of(2, 512, 7, 7, 512, 3, 3, pad=1), "cpp", grad=True)
    assert train_few.algo == "direct/direct/im2col" and "32 2x2 output tiles" in train_few.rule
    assert autotune.choose_auto(shape_of(1, 256, 14, 14, 256, 3, 3, pad=1), "cpp", grad=True).algo == \
        "direct/direct/im2col"  # 49 tiles
    # without gradients the same 49 tiles go to direct, 64 (4 images at 7x7) to Winograd
    assert autotune.choose_auto(shape_of(1, 256, 14, 14, 256, 3, 3, pad=1), "cpp").algo == "direct"
    assert autotune.choose_auto(shape_of(4, 512, 7, 7, 512, 3, 3, pad=1), "cpp").algo.startswith("winograd")
    monkeypatch.setattr(mod, "blocked_direct", lambda shape, dtype: False)
    assert autotune.choose_auto(shape_of(1, 512, 7, 7, 512, 3, 3, pad=1), "cpp").algo == "im2col"
    assert autotune.choose_auto(shape_of(2, 512, 7, 7, 512, 3, 3, pad=1), "cpp", grad=True).algo == "im2col"
    assert autotune.choose_auto(shape_of(8, 512, 7, 7, 512, 3, 3, pad=1), "cpp").algo == "winograd_4x4"


def test_heuristic_falls_through_missing_algorithms(monkeypatch):
    monkeypatch.setattr(backends.load("cpp"), "conv_algos", ("direct",))
    ch = autotune.choose_auto(shape_of(1, 64, 8, 8, 64, 3, 3, pad=1), "cpp")
    assert ch.algo == "direct" and "winograd" in ch.rule and "not implemented" in ch.rule


def test_explain_algo_public():
    ch = pyconv.explain_algo(torch.randn(1, 16, 8, 8), torch.randn(16, 1, 3, 3), padding=1, groups=16)
    assert ch.algo in backends.load("cpp").conv_algos and "depthwise" in str(ch)
    ch = pyconv.explain_algo((2, 2, 9, 9), (4, 2, 3, 3), stride=2, backend="cpp")
    assert ch.algo == "direct" and "reduction" in ch.rule
    with pytest.raises(pyconv.PyConvError):
        pyconv.explain_algo((2, 3, 9, 9), (4, 2, 5, 5))  # channel mismatch: the same checks as conv2d


def test_pass_plans():
    """'<forward>/<gradients>' and '<forward>/<grad-input>/<grad-weight>' plans: each part checked
    like a name; 'auto' and a fourth part refused."""
    from pyconv.problem import pass_algos
    s = shape_of(1, 16, 8, 8, 16, 3, 3, pad=1)
    assert autotune.resolve_conv_algo("direct/im2col", s, "cpp") == "direct/im2col"
    assert autotune.resolve_conv_algo("winograd/direct/im2col", s, "cpp") == "winograd/direct/im2col"
    assert pass_algos("a") == ("a",) * 3 and pass_algos("a/b") == ("a", "b", "b")
    assert pass_algos("a/b/c") == ("a", "b", "c")
    for bad, match in (("auto/im2col", "concrete"), ("direct/auto", "concrete"), ("direct/fft", "unknown"),
                       ("direct/im2col/direct/im2col", "concrete")):
        with pytest.raises(pyconv.PyConvError, match=match):
            autotune.resolve_conv_algo(bad, s, "cpp")
    with pytest.raises(pyconv.PyConvError, match="winograd"):
        autotune.resolve_conv_algo("im2col/winograd", shape_of(1, 16, 8, 8, 16, 5, 5), "cpp")


def test_named_algorithm_errors_unchanged():
    with pytest.raises(pyconv.PyConvError, match="winograd.*3x3"):
        autotune.resolve_conv_algo("winograd", shape_of(1, 4, 8, 8, 4, 5, 5), "cpp")
    with pytest.raises(pyconv.PyConvError, match="unknown algorithm"):
        autotune.resolve_conv_algo("fft", shape_of(1, 4, 8, 8, 4, 3, 3), "cpp")


# ----------------------------------------------------------------------------------- measured ---

def test_measured_picks_fastest_and_caches(measured, tmp_path):
    calls, _ = measured
    s = shape_of(2, 32, 10, 10, 32, 3, 3, pad=1)
    ch = autotune.choose_auto(s, "cpp")
    assert ch.algo == "im2col" and ch.source == "measured" and set(ch.times_ms) == set(calls)
    assert sorted(calls) == ["direct", "im2col", "winograd_2x2"]
    data = json.loads((tmp_path / "autotune.json").read_text())
    assert len(data["entries"]) == 1
    # memory hit
    assert autotune.choose_auto(s, "cpp").algo == "im2col" and len(calls) == 3
    # disk hit in a "new process" (memory cleared): no re-timing
    autotune.clear_memory_cache()
    hit = autotune.choose_auto(s, "cpp")
    assert hit.algo == "im2col" and hit.source == "cache" and len(calls) == 3


def test_winograd_not_timed_where_invalid(measured):
    calls, _ = measured
    autotune.choose_auto(shape_of(1, 8, 9, 9, 8, 3, 3, stride=2), "cpp")
    assert "winograd_2x2" not in calls


def test_cache_key_includes_versions_and_machine(measured, monkeypatch):
    calls, _ = measured
    s = shape_of(1, 16, 8, 8, 16, 3, 3, pad=1)
    key = autotune.cache_key(s, torch.float32, "cpp")
    assert pyconv.__version__ in key and autotune.cpu_model() in key and "float32" in key and "threads=" in key
    autotune.choose_auto(s, "cpp")
    n = len(calls)
    from pyconv import _version as pyconv_version

    monkeypatch.setattr(pyconv_version, "__version__", "999.0")
    autotune.clear_memory_cache()
    assert autotune.cache_key(s, torch.float32, "cpp") != key
    autotune.choose_auto(s, "cpp")
    assert len(calls) == 2 * n  # another version: re-timed, not reused
    assert autotune.cache_key(s, torch.float64, "cpp") != autotune.cache_key(s, torch.float32, "cpp")


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2, 3]", b'{"format": 1, "entries": {"k": 5}}',
                                     b'{"format": 99, "entries": {}}', b"\xff\xfe\x00", b""])
def test_corrupt_cache_file_is_ignored(measured, tmp_path, garbage):
    calls, _ = measured
    (tmp_path / "autotune.json").write_bytes(garbage)
    s = shape_of(1, 16, 8, 8, 16, 3, 3, pad=1)
    assert autotune.choose_auto(s, "cpp").algo == "im2col"
    assert len(calls) == 3
    data = json.loads((tmp_path / "autotune.json").read_text())  # rewritten whole
    assert data["format"] == autotune.CACHE_FORMAT and len(data["entries"]) == 1


def test_corrupt_entry_for_our_key_is_ignored(measured, tmp_path):
    calls, _ = measured
    s = shape_of(1, 16, 8, 8, 16, 3, 3, pad=1)
    key = autotune.cache_key(s, torch.float32, "cpp")
    (tmp_path / "autotune.json").write_text(json.dumps({"format": 1, "entries": {key: {"algo": "fft"}}}))
    assert autotune.choose_auto(s, "cpp").algo == "im2col" and len(calls) == 3


def test_unwritable_cache_dir_is_not_fatal(measured, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PYCONV_CACHE_DIR", str(blocker / "sub"))  # a dir under a file: cannot exist
    assert autotune.choose_auto(shape_of(1, 16, 8, 8, 16, 3, 3, pad=1), "cpp").algo == "im2col"


def test_concurrent_writers_keep_file_whole(measured, tmp_path):
    def worker(i):
        for j in range(10):
            autotune.update_json_cache(autotune.cache_file(), autotune.CACHE_FORMAT, f"k{i}-{j}", {"algo": "direct"})

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    data = json.loads((tmp_path / "autotune.json").read_text())
    assert len(data["entries"]) == 40  # the lock serializes read-merge-write: nothing lost
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_env_var_turns_it_on(monkeypatch):
    import importlib

    for v, want in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("PYCONV_AUTOTUNE", v)
        assert autotune.env_enabled() is want
    monkeypatch.delenv("PYCONV_AUTOTUNE")
    assert autotune.env_enabled() is False
    assert importlib.import_module("pyconv.autotune") is autotune  # pyconv.autotune is still the module
    prev = pyconv.autotune(True)
    assert autotune.autotune_enabled() and pyconv.autotune(prev) is True


def test_real_timing_and_end_to_end(tmp_path, monkeypatch):
    """Real kernels: _time_algo measures the cpp direct kernel, and conv2d(algo='auto') in measured
    mode matches torch."""
    monkeypatch.setenv("PYCONV_CACHE_DIR", str(tmp_path))
    s = shape_of(1, 4, 7, 7, 5, 3, 3, pad=1)
    assert autotune._time_algo("direct", s, torch.float32, "cpp", repeats=1) > 0
    prev = pyconv.autotune(True)
    try:
        x, w = torch.randn(2, 6, 9, 9, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        y = PF.conv2d(x, w, None, 1, 1, 1, 2)
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 2))
    finally:
        pyconv.autotune(prev)


@given(N=st.integers(0, 2), C=st.integers(1, 6), H=st.integers(1, 9), K=st.integers(1, 6), R=st.integers(1, 4),
       stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2), depthwise=st.booleans(),
       measured_mode=st.booleans())
def test_auto_never_fails_on_a_valid_shape(N, C, H, K, R, stride, pad, dil, depthwise, measured_mode, tmp_path_factory):
    groups = C if depthwise else 1
    K = C if depthwise else K
    if H + 2 * pad < dil * (R - 1) + 1:
        return
    os.environ["PYCONV_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "auto-cache")
    s = shape_of(N, C, H, H, K, R, R, stride, pad, groups, dil)
    prev = pyconv.autotune(measured_mode)
    try:
        for be in [b for b in pyconv.available_backends() if backends.REGISTRY[b].device == "cpu"]:
            algo = autotune.resolve_conv_algo("auto", s, be)
            assert algo in backends.load(be).conv_algos
            if algo.startswith("winograd"):
                assert problem.winograd_unsupported(s) is None
    finally:
        pyconv.autotune(prev)
        os.environ.pop("PYCONV_CACHE_DIR", None)


def test_heuristic_with_gradients_avoids_winograd_on_few_tiles():
    """With gradients on fewer than 64 2x2 output tiles (few tiles per transformed filter), 'auto'
    takes im2col's grad-weight (and the channel-blocked direct forward and grad-input:
    "direct/direct/im2col"); the forward-only choice stays Winograd; from 64 tiles on gradients do
    not change it."""
    import torch as _t
    import pyconv.functional as PF

    small = shape_of(2, 64, 7, 7, 64, 3, 3, pad=1)
    assert autotune.resolve_conv_algo("auto", small, "cpp").startswith("winograd")
    assert autotune.resolve_conv_algo("auto", small, "cpp", grad=True) == "direct/direct/im2col"
    large = shape_of(4, 64, 8, 8, 64, 3, 3, pad=1)  # 64 tiles
    assert autotune.resolve_conv_algo("auto", large, "cpp", grad=True).startswith("winograd")
    x, w = _t.randn(2, 64, 7, 7, requires_grad=True), _t.randn(64, 64, 3, 3, requires_grad=True)
    y = PF.conv2d(x, w, padding=1)  # through the functional: grad-aware choice, same result as torch
    y.sum().backward()
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    _t.nn.functional.conv2d(xr, wr, padding=1).sum().backward()
    assert _t.allclose(x.grad, xr.grad, rtol=1e-4, atol=1e-3) and _t.allclose(w.grad, wr.grad, rtol=1e-4, atol=1e-3)
