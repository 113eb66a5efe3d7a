"""Engines pyconv-bench compares against besides torch eager, each optional.

- onnxruntime (whole networks, inference): the torch model exported with torch.onnx, run on the
  CPU provider with the benchmark's thread count and spinning off (ORT's threads spin by default
  and would starve the side timed next to them).
- compile (whole networks): torch.compile of the torch model; its compile time is reported apart.
- nnpack (layer suites, conv2d forward): torch's bundled NNPACK, whose 3x3 stride-1 path is
  Winograd F(6x6, 3x3): the like-for-like peer for pyconv's Winograd (torch eager's CPU
  convolution is oneDNN's direct one).

A peer that cannot run here is skipped with the reason `unavailable(name)` gives.
"""
from __future__ import annotations

import importlib
import io
import os
import shutil
import warnings
from typing import Callable, Optional, Tuple

import torch

MODEL_PEERS = ("onnxruntime", "compile")
LAYER_PEERS = ("nnpack",)
PEERS = MODEL_PEERS + LAYER_PEERS
INSTALL_HINT = "pip install 'pyconv[peers]'"


def _import(name: str):
    return importlib.import_module(name)


def unavailable(name: str) -> Optional[str]:
    """Why peer `name` cannot run on this machine, or None when it can."""
    if name == "onnxruntime":
        for mod in ("onnxruntime", "onnx"):  # torch.onnx.export needs the onnx package
            try:
                _import(mod)
            except ImportError as e:
                return f"{mod} is not installed ({INSTALL_HINT}): {e}"
        return None
    if name == "compile":
        if not hasattr(torch, "compile"):
            return f"torch {torch.__version__} has no torch.compile"
        # inductor's CPU backend compiles C++; without a compiler it fails at the first call
        if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
            return "no C++ compiler found (torch.compile's inductor backend needs one: set CXX or install g++)"
        return None
    if name == "nnpack":
        # _nnpack_available() also initializes NNPACK: its convolution fails until it has run
        if not (hasattr(torch, "_nnpack_available") and torch._nnpack_available()):
            return "torch was built without NNPACK, or NNPACK does not support this CPU"
        return None
    raise KeyError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")


# ------------------------------------------------------------------------------ onnxruntime ---

def onnxruntime_session(model: torch.nn.Module, example: torch.Tensor, threads: int):
    """(run, export+session seconds): `run(x_numpy)` returns the model's output as numpy.
    The model is exported for the example's exact shape (static shapes let ORT plan best)."""
    import time

    ort = _import("onnxruntime")
    t0 = time.perf_counter()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            # the TorchScript-based exporter needs only onnx; dynamo=True needs onnxscript as well
            torch.onnx.export(model, (example,), buf, input_names=["x"], output_names=["y"], dynamo=False)
        except TypeError:  # a torch without the dynamo= keyword
            torch.onnx.export(model, (example,), buf, input_names=["x"], output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    setup = time.perf_counter() - t0

    def run(x_np):
        return sess.run(None, {"x": x_np})[0]

    return run, setup


# ---------------------------------------------------------------------------------- compile ---

def compiled(model: torch.nn.Module) -> Callable:
    """torch.compile(model) with static shapes (each mode compiles its own; the first call, which
    compiles, is timed apart by the caller)."""
    return torch.compile(model, dynamic=False)


# ----------------------------------------------------------------------------------- nnpack ---

def nnpack_conv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: int, padding: int,
                groups: int, dtype: torch.dtype) -> Tuple[Optional[Callable[[], torch.Tensor]], str]:
    """(callable, "") running the convolution through NNPACK, or (None, why not)."""
    if groups != 1:
        return None, "NNPACK has no grouped convolution"
    if dtype != torch.float32:
        return None, "NNPACK is float32 only"
    if x.device.type != "cpu":
        return None, "NNPACK runs on the CPU"
    pad, st = [padding, padding], [stride, stride]  # both as pairs: a 1-element list crashes it
    return (lambda: torch._nnpack_spatial_convolution(x, w, b, pad, st)), ""
