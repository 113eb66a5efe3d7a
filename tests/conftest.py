import os

# Before pyconv is imported: outputs start as NaN and native workspaces as 0xA5 garbage.
os.environ.setdefault("PYCONV_DEBUG_FILL", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, register_random, settings  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import pyconv  # noqa: E402
from pyconv import backends  # noqa: E402

# CI runs the default profile derandomized, so a run is reproducible; "thorough" explores at random.
settings.register_profile("default", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("PYCONV_HYPOTHESIS_PROFILE", "default"))


class _TorchGlobalRandom:
    """torch's global generator in the interface hypothesis manages: hypothesis seeds it before each
    example and restores it after, so an example's torch.randn data no longer depends on the tests
    and examples before it, and a failing example replays with the same data."""

    def seed(self, s):
        torch.manual_seed(s)

    def getstate(self):
        return torch.get_rng_state()

    def setstate(self, state):
        torch.set_rng_state(state)


_TORCH_RANDOM = _TorchGlobalRandom()  # hypothesis keeps only a weak reference
register_random(_TORCH_RANDOM)

torch.set_num_threads(2)


class DispatchLog(TorchDispatchMode):
    """Records the name of every op dispatched while it is active (tests of what a call runs)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def cpu_backends():
    return [b for b in pyconv.available_backends() if backends.REGISTRY[b].device == "cpu"]


def conv_impls():
    """Every (backend, algo) pair implemented on this machine's CPU backends."""
    return [(b, a) for b in cpu_backends() for a in backends.load(b).conv_algos]


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none present"))
