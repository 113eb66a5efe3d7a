"""Bad arguments: pyconv raises where torch raises (PyConvError, a ValueError and RuntimeError, or
TypeError for wrong types) and returns the same values where torch returns."""
import pytest
import torch
import torch.nn.functional as F

import pyconv
import pyconv.functional as PF

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)

BAD_CONV = [
    dict(stride=0),
    dict(stride=-1),
    dict(stride=(1, 2, 3)),
    dict(padding=-1),
    dict(padding="circular"),
    dict(padding="same", stride=2),
    dict(dilation=0),
    dict(groups=0),
    dict(groups=3),
    dict(padding=0, weight=torch.randn(6, 4, 9, 9)),
    dict(weight=torch.randn(6, 3, 3, 3)),
    dict(weight=torch.randn(6, 4, 3)),
    dict(bias=torch.randn(5)),
    dict(bias=torch.randn(6, dtype=torch.float64)),
    dict(input=torch.randn(4, 8)),
    dict(input=torch.randn(1, 2, 4, 8, 8)),
    dict(input=torch.randn(2, 4, 8, 8, dtype=torch.float64)),
    dict(input=torch.randn(2, 4, 8, 8).to(torch.bfloat16), weight=W.to(torch.float16)),
]


def test_integer_dtypes_rejected():
    """torch convolves integer tensors on the CPU's slow path; pyconv's kernels are float32/float64
    only and say so instead of converting silently."""
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        PF.conv2d(torch.randint(0, 5, (2, 4, 8, 8)), torch.randint(0, 5, (6, 4, 3, 3)))


@pytest.mark.parametrize("bad", BAD_CONV, ids=lambda d: ",".join(f"{k}" for k in d))
def test_conv2d_raises_like_torch(bad):
    kw = dict(bad)
    x, w, b = kw.pop("input", X), kw.pop("weight", W), kw.pop("bias", None)
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        F.conv2d(x, w, b, **kw)
    with pytest.raises((pyconv.PyConvError, TypeError)) as info:
        PF.conv2d(x, w, b, **kw)
    assert str(info.value)


def test_error_is_value_and_runtime_error():
    assert issubclass(pyconv.PyConvError, ValueError) and issubclass(pyconv.PyConvError, RuntimeError)
    with pytest.raises(pyconv.PyConvError, match="stride"):
        PF.conv2d(X, W, stride=0)


def test_wrong_types():
    with pytest.raises(TypeError):
        PF.conv2d([[1.0]], W)
    with pytest.raises(TypeError):
        PF.conv2d(X, W, stride=1.5)


def test_algo_and_backend_errors():
    with pytest.raises(pyconv.PyConvError, match="algo"):
        PF.conv2d(X, W, algo="fft")
    with pytest.raises(pyconv.PyConvError, match="backend"):
        PF.conv2d(X, W, backend="tpu")
    with pytest.raises(pyconv.PyConvError, match="winograd.*3x3"):
        PF.conv2d(X, torch.randn(6, 4, 5, 5), algo="winograd_4x4")
    with pytest.raises(pyconv.PyConvError, match="stride"):
        PF.conv2d(X, W, stride=2, algo="winograd")


def test_an_algorithm_a_backend_lacks_is_refused_by_name(monkeypatch):
    """Capability lives with the backend: what its can_run refuses, conv2d refuses with the reason."""
    from pyconv import backends
    be = backends.load("cpp")
    monkeypatch.setattr(be, "conv_algos", ("direct",))
    for algo in ("im2col", "winograd_2x2", "winograd_4x4", "winograd"):
        with pytest.raises(pyconv.PyConvError, match=f"algo={algo!r}.*does not implement"):
            PF.conv2d(X, W, algo=algo)
    assert PF.conv2d(X, W, algo="auto").shape == F.conv2d(X, W).shape


def test_native_binding_rejects_bad_buffers():
    """The binding checks buffers against the shape instead of reading out of bounds."""
    from pyconv import _C
    s = _C.ConvShape(N=1, C=2, H=5, W=5, K=3, R=3, S=3, P=3, Q=3, G=1, stride_h=1, stride_w=1, pad_h=0,
                     pad_w=0, dil_h=1, dil_w=1)
    x, w, y = torch.randn(1, 2, 5, 5).numpy(), torch.randn(3, 2, 3, 3).numpy(), torch.empty(1, 3, 3, 3).numpy()
    _C.conv_direct_forward(s, x, w, None, y)
    with pytest.raises(pyconv.PyConvError, match="elements"):
        _C.conv_direct_forward(s, x.reshape(-1)[:40].copy(), w, None, y)
    with pytest.raises(pyconv.PyConvError, match="dtype"):
        _C.conv_direct_forward(s, x.astype("float64"), w, None, y)
    with pytest.raises(pyconv.PyConvError, match="contiguous"):
        _C.conv_direct_forward(s, torch.randn(1, 2, 5, 10).numpy()[..., ::2], w, None, y)
    with pytest.raises(pyconv.PyConvError):
        _C.ConvShape(N=1, C=2, H=5, W=5, K=3, R=3, S=3, P=9, Q=3, G=1, stride_h=1, stride_w=1, pad_h=0,
                     pad_w=0, dil_h=1, dil_w=1)


def test_package_surface():
    assert isinstance(pyconv.__version__, str)
    assert "cpp" in pyconv.available_backends()
    with pytest.raises(pyconv.PyConvError):
        pyconv.set_num_threads(0)


def test_conv_plans_are_reused_and_bad_calls_still_fail():
    """pyconv.functional keeps each checked convolution call's plan (keyed by sizes, dtypes, devices,
    arguments, gradient mode): identical later calls skip the checks, anything else is checked."""
    from pyconv import functional

    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(PF.conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1))
    n = len(functional._PLANS)
    x2, w2 = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(PF.conv2d(x2, w2, padding=1), torch.nn.functional.conv2d(x2, w2, padding=1))
    assert len(functional._PLANS) == n
    with pytest.raises(pyconv.PyConvError):
        PF.conv2d(x.double(), w, padding=1)
    with pytest.raises(pyconv.PyConvError):
        PF.conv2d(torch.randn(2, 5, 8, 8), w, padding=1)
    x3 = x[:, :, :7]  # another size, a strided view: a new plan, a contiguous copy for the kernel
    torch.testing.assert_close(PF.conv2d(x3, w, padding=1), torch.nn.functional.conv2d(x3, w, padding=1))
    xs = torch.randn(3, 8, 8)  # unbatched
    torch.testing.assert_close(PF.conv2d(xs, w, padding=1), torch.nn.functional.conv2d(xs, w, padding=1))
    torch.testing.assert_close(PF.conv2d(xs, w, padding=1), torch.nn.functional.conv2d(xs, w, padding=1))
