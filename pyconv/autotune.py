"""Which convolution algorithm runs: names checked against the shape, algo='auto' resolved.

A named algorithm that cannot do the shape, or that the backend does not have, raises PyConvError
naming the algorithm and the reason (the backend's can_run). 'auto' never fails on a valid shape.

algo='auto' has two modes:

- heuristic (default): a shape rule, in this order (the first that applies fires; explain_algo
  names it):
    1. depthwise (one input channel per group) -> direct: no reduction dimension worth a GEMM;
    2. 3x3, stride 1, dilation 1, >= 16 channels per group in and out -> Winograd (F(4x4,3x3)
       cuts the multiplies 4x, F(2x2,3x3) 2.25x; small channel counts cannot amortize the
       transforms) -- except when gradients will be taken on fewer than 64 F(2x2) tiles per call:
       each pass transforms the filters (or builds their gradient, 16 x C x K) for a few tiles.
       cpp, ms, forward / grad-input / grad-weight: 512 channels at 7x7, batch 2 (32 tiles), F(2x2)
       6.5 / 4.1 / 4.8 against direct 2.7 / 3.2 and im2col's grad-weight 2.4; 256 at 14x14,
       batch 1 (49): 1.8 / 2.0 / 2.1 against 1.6 / 1.5 / 1.2; at 64 tiles level, at 128 (batch 8
       at 7x7) F(2x2) ahead, 7.7 / 8.5 / 7.1 against 9.0 / 9.6 / 9.2 (torch 8.4 / 8.4 / 16.6) --
       and except, without gradients, when fewer than 64 F(2x2) tiles share transformed filters
       larger than L2 (16 C K values > 256 Ki: ResNet-18's 512-channel 7x7 layer at batch 1, F(2x2)
       2.4 ms against direct's 1.5; prepared filters too, which a layer timed alone keeps in cache
       but a network reads from memory). Both exceptions: im2col -- or, where the backend's
       direct forward is channel-blocked (Backend.blocked_direct: cpp with >= 8 output channels per
       group), direct without gradients and the plan "direct/direct/im2col" with them (forward and
       grad-input on the blocked kernel, grad-weight im2col);
    3. 1x1 -> im2col: a 1x1 convolution *is* a GEMM, with no column matrix to build;
    4. wide layers (C/G * R * S >= 64) -> im2col: the packed GEMM beats direct loops on long
       reductions. Where the backend's direct forward is channel-blocked and the layer has at least
       32 input channels per group (BLOCKED_DIRECT_MIN_INPUT_CHANNELS; on fewer, RGB stems included,
       im2col is 1.1-1.8x ahead): direct without gradients (the same micro-kernel with no im2col
       panels; stride-2 3x3 layers 1.0-1.18x im2col, both with prepared weights), and with them
       "direct/direct/im2col" where direct's grad-input is the blocked kernel too (stride 1, or
       strided with dilation 1 and a kernel at least the stride: one stride-1 convolution per output
       phase; ResNet's stride-2 3x3 layers at batch 8 0.70-0.83x im2col's grad-input time),
       "direct/im2col" otherwise (direct's grad-weight is slower than im2col's);
    5. everything else -> direct, or im2col where the backend's direct forward would be
       channel-blocked (such a short reduction has few input channels: see rule 4; direct's
       grad-input of a narrow strided layer runs row loops, MobileNetV2's 3 -> 32 stride-2 stem at batch 8: forward + both
       gradients 35 ms, 14 with the gradients on im2col; torch 15).
  A plan "<forward>/<gradients>" or "<forward>/<grad-input>/<grad-weight>" runs each pass with its
  algorithm (the ops take plans; so does algo= for a user who wants one).
  A rule whose algorithm the backend does not implement falls through to the next one.
- measured: pyconv.autotune(True), or PYCONV_AUTOTUNE=1 in the environment. Each valid algorithm
  is timed once per (shape, dtype, backend, threads) on random data through the backend's forward
  kernel (the forward alone: the training exception of rule 2 is the heuristic's), and the fastest is cached in memory and on disk (JSON in cache_dir(), entries keyed also
  by CPU model, ISA and pyconv version, so another machine or release never reuses them). A corrupt
  or stale cache file is ignored; writers merge under a lock file and publish with os.replace, so
  concurrent processes never leave a torn file.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import types
from typing import Dict, List, NamedTuple, Optional

import torch

from . import backends
from ._errors import PyConvError
from .problem import ALGOS, PASS_SEP, ConvShape, pass_algos, winograd_unsupported

CACHE_FORMAT = 1
WINOGRAD_MIN_CHANNELS = 16
# With gradients, Winograd from this many F(2x2) output tiles per call on (rule 2's first exception).
WINOGRAD_TRAIN_MIN_TILES2 = 64
# Below this many F(2x2) output tiles per call, transformed filters larger than a core's L2 are
# streamed from memory for a handful of tiles each (ResNet-18's 512x512 7x7 layer at batch 1: 16
# tiles, 16 MiB of transformed filters; F(2x2) 2.5 ms, im2col 1.9 ms). From 32 to 63 tiles the
# blocked direct kernel is still ahead of 'winograd' (ms, min of 3 alternating runs, no gradients,
# filters not prepared: 1x256x14x14 1.84 against 3.43, 1x512x14x14 7.1 / 7.4, 2x512x7x7 5.0 / 6.7,
# 3x512x7x7 5.6 / 6.1, 2x256x7x7 1.19 / 1.69, 1x128x14x14 0.53 / 0.76); at 64 level (4x512x7x7
# 6.88 / 6.89). The same holds with the transformed filters prepared (inference): a layer timed alone
# keeps them in cache (1x256x14x14 F(2x2) 0.60 ms, direct 0.89), but in a network each layer's
# filters come from memory, 2.25x (F(2x2)) or 4x (F(4x4)) the bytes of the direct kernel's. Whole
# networks at batch 1, converted, eval, min of 7 alternating processes: ResNet-50 41.2 -> 37.8 ms,
# ResNet-18 14.2 -> 12.4 with these layers on direct instead of prepared Winograd (F(4x4) at 14x14,
# F(2x2) at 7x7); F(2x2) at 14x14 too reached 37.9 / 12.4.
WINOGRAD_MIN_TILES2 = 64
WINOGRAD_MAX_STREAMED_FILTER_ELEMS = 256 * 1024
IM2COL_MIN_REDUCTION = 64
# The channel-blocked direct kernel (rules 4 and 5) from this many input channels per group; on
# fewer, im2col. im2col / blocked direct, cpp, batch 8 unless marked, min of 7-9 interleaved calls
# (prepared weights / not): 3x3 stride 1 at 32x32 to 32 channels, 4 in 0.74 / 0.75, 8 0.83 / 0.84,
# 12 0.89 / 0.98, 16 0.92 / 0.86, 24 0.76 / 0.72, 32 1.00 / 0.99; 3x3 stride 2 at 56x56 to 64, 4 in
# 0.72 / 0.76, 8 0.94 / 0.73, 16 0.91 / 0.91, 24 0.71 / 0.74, 32 1.01 / 1.05; RGB stems: CIFAR's
# 3 -> 16 at 32x32 0.78 (batch 1 0.56), MobileNetV2's 3 -> 32 stride 2 at 224 0.66 (batch 1 0.67),
# VGG-16's 3 -> 64 at 224 0.57 (batch 1 0.68), ResNet's 7x7 stride 2 0.83 (batch 1 0.66). From 64
# input channels (ResNet-18's stride-2 3x3 layers) the blocked kernel is 1.0-1.18x ahead.
BLOCKED_DIRECT_MIN_INPUT_CHANNELS = 32


class AlgoChoice(NamedTuple):
    """What algo='auto' picked for one convolution, and why."""

    algo: str
    rule: str  # the heuristic rule that fired, or the measurement
    source: str  # "heuristic", "measured", "cache" or "only candidate"
    times_ms: Dict[str, float]  # measured forward times per algorithm (empty for the heuristic)

    def __str__(self) -> str:
        out = f"{self.algo} ({self.source}): {self.rule}"
        if self.times_ms:
            out += "; " + ", ".join(f"{a} {t:.3g} ms" for a, t in sorted(self.times_ms.items(), key=lambda i: i[1]))
        return out


def _first_winograd(have) -> Optional[str]:
    """The Winograd algorithm 'auto' runs: the alias (it picks the tile) or a concrete variant."""
    return next((a for a in ("winograd", "winograd_4x4", "winograd_2x2") if a in have), None)


def _phased_grad_input(shape: ConvShape) -> bool:
    """Whether the channel-blocked grad-input takes this strided shape (conv_blocked.cpp's
    backward_input_phased): dilation 1 and a kernel at least as wide as the stride, so that every
    output phase has a tap."""
    return ((shape.dil_h, shape.dil_w) == (1, 1) and shape.R >= shape.stride_h and shape.S >= shape.stride_w)


def _heuristic(shape: ConvShape, have, grad: bool = False, blocked_direct=lambda: False,
               prepared: bool = False) -> AlgoChoice:
    """The shape rule for 'auto' (see the module docstring); returns the algorithm and the rule.
    grad: gradients will be taken (the backward runs the same algorithm). blocked_direct(): whether
    the backend's direct forward for this shape is channel-blocked (Backend.blocked_direct; asked
    only where a rule depends on it). prepared: the caller keeps the weights in the kernel's form
    between calls (an eval-mode layer); no rule changes with it (prepared Winograd filters are read
    from memory in a network all the same), only the few-tile rule's explanation says so."""
    cg, kg = shape.C // shape.G, shape.K // shape.G
    reduction = cg * shape.R * shape.S
    missing = []

    def pick(algo, rule):
        if missing:
            rule += f" ({'; '.join(missing)})"
        return AlgoChoice(algo, rule, "heuristic", {})

    if cg == 1 and shape.G > 1:
        return pick("direct", f"depthwise/one channel per group (groups={shape.G}): direct")
    if winograd_unsupported(shape) is None and min(cg, kg) >= WINOGRAD_MIN_CHANNELS:
        tiles2 = shape.N * -(-shape.P // 2) * -(-shape.Q // 2)
        if grad and tiles2 < WINOGRAD_TRAIN_MIN_TILES2 and reduction >= IM2COL_MIN_REDUCTION and "im2col" in have:
            few = (f"3x3 stride-1 with gradients on {tiles2} 2x2 output tiles (< {WINOGRAD_TRAIN_MIN_TILES2}): "
                   f"few tiles per transformed filter")
            if "direct" in have and blocked_direct():
                return pick("direct/direct/im2col", few + "; forward and grad-input channel-blocked direct, "
                                                          "grad-weight GEMM")
            return pick("im2col", few + ", GEMM")
        if tiles2 < WINOGRAD_MIN_TILES2 and 16 * cg * kg * shape.G > WINOGRAD_MAX_STREAMED_FILTER_ELEMS:
            few = (f"3x3 stride-1 with {tiles2} 2x2 output tiles (< {WINOGRAD_MIN_TILES2}) for "
                   f"{16 * cg * kg * shape.G} transformed filter values: the filters would stream from memory "
                   f"for a few tiles each" + (" (prepared ones too: in a network they are cold)" if prepared else ""))
            if "direct" in have and "im2col" in have and blocked_direct():
                if not grad:
                    return pick("direct", few + "; channel-blocked direct")
                return pick("direct/direct/im2col", few + "; forward and grad-input channel-blocked direct, "
                                                          "grad-weight GEMM")
            if "im2col" in have:
                return pick("im2col", few + ", GEMM")
        w = _first_winograd(have)
        if w:
            return pick(w, f"3x3 stride-1 with {cg}->{kg} channels per group (>= {WINOGRAD_MIN_CHANNELS}): Winograd")
        missing.append("3x3 stride-1 rule wants winograd, not implemented by this backend")
    if (shape.R, shape.S) == (1, 1):
        if "im2col" in have:
            return pick("im2col", "1x1 kernel: the convolution is a GEMM")
        missing.append("1x1 rule wants im2col, not implemented by this backend")
    elif reduction >= IM2COL_MIN_REDUCTION:
        blocked = "direct" in have and "im2col" in have and blocked_direct()
        if blocked and cg >= BLOCKED_DIRECT_MIN_INPUT_CHANNELS:
            if not grad:
                return pick("direct", f"wide layer, {cg}->{kg} channels per group: channel-blocked direct "
                                      f"(no im2col panels)")
            if (shape.stride_h, shape.stride_w) == (1, 1):
                return pick("direct/direct/im2col", f"wide stride-1 layer, {cg}->{kg} channels per group: forward "
                                                    f"and grad-input channel-blocked direct, grad-weight GEMM")
            if _phased_grad_input(shape):
                return pick("direct/direct/im2col", f"wide strided layer, {cg}->{kg} channels per group: forward "
                                                    f"channel-blocked direct, grad-input too (one stride-1 "
                                                    f"convolution per output phase), grad-weight GEMM")
            return pick("direct/im2col", f"wide layer, {cg}->{kg} channels per group: forward channel-blocked "
                                         f"direct (no im2col panels), gradients GEMM")
        if "im2col" in have:
            few = (f" ({cg} < {BLOCKED_DIRECT_MIN_INPUT_CHANNELS} input channels per group: the channel-blocked "
                   f"direct kernel does not pay)" if blocked else "")
            return pick("im2col", f"wide layer, reduction C/G*R*S = {reduction} >= {IM2COL_MIN_REDUCTION}: GEMM{few}")
        missing.append("wide-layer rule wants im2col, not implemented by this backend")
    if missing:
        return pick("direct", "fallback to direct")
    if "im2col" in have and blocked_direct():
        return pick("im2col", f"short reduction (C/G*R*S = {reduction} < {IM2COL_MIN_REDUCTION}) on {cg} input "
                              f"channels per group (< {BLOCKED_DIRECT_MIN_INPUT_CHANNELS}): GEMM, ahead of the "
                              f"channel-blocked direct kernel")
    return pick("direct", f"no faster rule applies (reduction C/G*R*S = {reduction} < {IM2COL_MIN_REDUCTION}): direct")


# ----------------------------------------------------------------------- measured autotuning ---

def env_enabled() -> bool:
    """PYCONV_AUTOTUNE=1 (any value but "" and "0") turns measured mode on at import."""
    return os.environ.get("PYCONV_AUTOTUNE", "0") not in ("", "0")


_state = {"enabled": env_enabled()}
_memory: Dict[str, AlgoChoice] = {}
_memory_lock = threading.Lock()


def set_autotune(enabled: bool = True) -> bool:
    """Turns measured autotuning for algo='auto' on or off; returns the previous setting.
    Also reachable as pyconv.autotune(enabled)."""
    prev = _state["enabled"]
    _state["enabled"] = bool(enabled)
    return prev


def autotune_enabled() -> bool:
    return _state["enabled"]


def clear_memory_cache() -> None:
    with _memory_lock:
        _memory.clear()


def cache_dir() -> str:
    """PYCONV_CACHE_DIR, else $XDG_CACHE_HOME/pyconv, else ~/.cache/pyconv."""
    d = os.environ.get("PYCONV_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyconv")


def cache_file() -> str:
    return os.path.join(cache_dir(), "autotune.json")


_cpu_model_cache: List[str] = []


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo where there is one)."""
    if not _cpu_model_cache:
        name = ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        if not name:
            import platform

            name = platform.processor() or platform.machine() or "unknown-cpu"
        _cpu_model_cache.append(name)
    return _cpu_model_cache[0]


def _device_name(backend: str) -> str:
    if backends.load(backend).device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from . import _C

    return f"{cpu_model()} ({_C.isa()})"


def _threads() -> int:
    from . import _C

    return _C.get_num_threads()


def cache_key(shape: ConvShape, dtype: torch.dtype, backend: str) -> str:
    """One string per (machine, pyconv version, backend, dtype, threads, shape)."""
    from ._version import __version__

    dt = str(dtype).replace("torch.", "")
    return "|".join([f"pyconv={__version__}", _device_name(backend), backend, dt, f"threads={_threads()}",
                     "shape=" + ",".join(str(int(v)) for v in shape)])


def read_json_file(path: str) -> Optional[dict]:
    """A JSON object from path, or None when missing, unreadable or corrupt (never raises)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive advisory lock (fcntl) where the OS has one; elsewhere writers race, and the
    os.replace in write_json_atomic still keeps the file whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def write_json_atomic(path: str, data: dict) -> None:
    """Writes a temp file in the same folder and renames it over path (atomic on POSIX and
    Windows), so readers see either the old or the new file, never a torn one."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update_json_cache(path: str, fmt: int, key: str, value: dict) -> None:
    """Merges one entry into a {"format": fmt, "entries": {...}} cache file under the lock.
    Failures (read-only disk, ...) are ignored: the cache is an optimization."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with _file_lock(path + ".lock"):
            data = read_json_file(path)
            if not data or data.get("format") != fmt or not isinstance(data.get("entries"), dict):
                data = {"format": fmt, "entries": {}}
            # keep only well-formed entries of other keys
            data["entries"] = {k: v for k, v in data["entries"].items() if isinstance(v, dict)}
            data["entries"][key] = value
            write_json_atomic(path, data)
    except OSError:
        pass


def _disk_lookup(key: str) -> Optional[AlgoChoice]:
    data = read_json_file(cache_file())
    if not data or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return None
    e = data["entries"].get(key)
    try:
        algo, times = e["algo"], e.get("times_ms", {})
        if algo not in ALGOS or algo == "auto" or not isinstance(times, dict):
            return None
        return AlgoChoice(algo, str(e.get("rule", "measured earlier")), "cache",
                          {str(k): float(v) for k, v in times.items()})
    except (TypeError, KeyError, ValueError):
        return None


def candidates(shape: ConvShape, backend: str) -> List[str]:
    """The algorithms the backend can run on this shape (the 'winograd' alias only when no concrete
    variant is there to time instead)."""
    be = backends.load(backend)
    out = [a for a in be.conv_algos if be.can_run("conv2d_forward", a, shape) is None]
    if "winograd" in out and any(a in out for a in ("winograd_2x2", "winograd_4x4")):
        out.remove("winograd")
    return out


def _time_algo(algo: str, shape: ConvShape, dtype: torch.dtype, backend: str, repeats: int = 3) -> float:
    """Seconds of one forward convolution with this algorithm (best of `repeats`, after one
    untimed warm-up call that absorbs JIT compilation and first-touch page faults)."""
    mod = backends.load(backend)
    dev = torch.device(mod.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape.N, shape.C, shape.H, shape.W, generator=g, dtype=dtype).to(dev)
    w = torch.randn(shape.K, shape.C // shape.G, shape.R, shape.S, generator=g, dtype=dtype).to(dev)
    y = torch.empty(shape.N, shape.K, shape.P, shape.Q, dtype=dtype, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    mod.conv2d_forward(x, w, None, y, shape, algo)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mod.conv2d_forward(x, w, None, y, shape, algo)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(shape: ConvShape, dtype: torch.dtype, backend: str, cands: List[str]) -> Optional[AlgoChoice]:
    times = {}
    for a in cands:
        try:
            times[a] = _time_algo(a, shape, dtype, backend) * 1e3
        except PyConvError:  # a kernel that refuses the shape at its binding is not a candidate
            continue
    if not times:
        return None
    best = min(times, key=times.get)
    return AlgoChoice(best, f"fastest of {len(times)} measured forward kernels", "measured", times)


def _measured_choice(shape: ConvShape, dtype: torch.dtype, backend: str) -> Optional[AlgoChoice]:
    cands = candidates(shape, backend)
    if len(cands) == 1:
        return AlgoChoice(cands[0], "the only implemented algorithm valid for this shape", "only candidate", {})
    key = cache_key(shape, dtype, backend)
    with _memory_lock:
        hit = _memory.get(key)
    if hit is not None and hit.algo in cands:
        return hit._replace(source="cache")
    hit = _disk_lookup(key)
    if hit is not None and hit.algo in cands:
        with _memory_lock:
            _memory[key] = hit
        return hit
    choice = _measure(shape, dtype, backend, cands)
    if choice is None:
        return None
    with _memory_lock:
        _memory[key] = choice
    update_json_cache(cache_file(), CACHE_FORMAT, key,
                      {"algo": choice.algo, "rule": choice.rule, "times_ms": choice.times_ms,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return choice


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def choose_auto(shape: ConvShape, backend: str, dtype: torch.dtype = torch.float32,
                grad: bool = False, prepared: bool = False) -> AlgoChoice:
    """algo='auto' for this shape: measured when autotuning is on (and not while torch.compile
    traces, which must not run kernels), the heuristic otherwise. grad: gradients will be taken;
    prepared: the weights are kept in the kernel's form between calls (see _heuristic)."""
    if _state["enabled"] and not _compiling() and shape.N * shape.K * shape.P * shape.Q > 0:
        choice = _measured_choice(shape, dtype, backend)
        if choice is not None:
            return choice
    be = backends.load(backend)
    return _heuristic(shape, be.conv_algos, grad, lambda: be.blocked_direct(shape, dtype), prepared and not grad)


def resolve_conv_algo(algo: str, shape: ConvShape, backend: str, dtype: torch.dtype = torch.float32,
                      grad: bool = False, prepared: bool = False) -> str:
    """The concrete algorithm to run: 'auto' resolved, a named one checked with the backend's
    can_run (PyConvError naming the algorithm and the reason)."""
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str, got {type(algo).__name__}")
    if PASS_SEP in algo:  # a plan: each part a concrete algorithm this shape can run
        parts = pass_algos(algo)
        if "auto" in parts or PASS_SEP in parts[2]:
            raise PyConvError(f"algo={algo!r}: a plan names two or three concrete algorithms, "
                              f"'<forward>/<gradients>' or '<forward>/<grad-input>/<grad-weight>'")
        for part in parts:
            resolve_conv_algo(part, shape, backend, dtype)
        return algo
    if algo not in ALGOS:
        raise PyConvError(f"algo={algo!r}: unknown algorithm; expected one of {ALGOS}")
    if algo == "auto":
        return choose_auto(shape, backend, dtype, grad, prepared).algo
    why = backends.load(backend).can_run("conv2d_forward", algo, shape)
    if why:
        raise PyConvError(f"algo={algo!r} cannot run this convolution: {why}")
    return algo


def explain_algo(input, weight, stride=1, padding=0, dilation=1, groups=1, *, dtype=None,
                 backend="auto") -> AlgoChoice:
    """What conv2d(input, weight, ..., algo='auto', backend=backend) runs, and why.

    input and weight are tensors or arrays, or just their sizes (tuples); dtype defaults to the
    input's (float32 for sizes). In measured mode this times the candidates (or reads the cache)."""
    from . import _args

    def size_of(a, name):
        if isinstance(a, (tuple, list, torch.Size)):
            return tuple(_args.as_int(v, name) for v in a), None, None
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            t = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
            return tuple(t.shape), t.dtype, t.device
        raise TypeError(f"{name} must be a tensor, an array or a tuple of sizes, got {type(a).__name__}")

    xs, xdt, xdev = size_of(input, "input")
    ws, _, _ = size_of(weight, "weight")
    if len(xs) == 3:
        xs = (1,) + xs
    if len(xs) != 4 or len(ws) != 4:
        raise PyConvError(f"input/weight: expected 4-D (or 3-D input) sizes, got {xs} and {ws}")
    dtype = dtype or xdt or torch.float32
    params = _args.conv2d_params(ws[2:], stride, padding, dilation, groups)
    # the full shape checks of conv2d, on meta tensors (no memory)
    shape = _args.conv2d_shape(torch.empty(xs, dtype=dtype, device="meta"),
                               torch.empty(ws, dtype=dtype, device="meta"), None, params)
    if xdev is None:  # sizes only: the device the backend runs on
        known = backend in backends.REGISTRY
        xdev = torch.device(backends.REGISTRY[backend].device if known else "cpu")
    be = backends.resolve(backend, xdev)
    return choose_auto(shape, be, dtype)


class _CallableModule(types.ModuleType):
    """pyconv.autotune(True) turns measured mode on, while pyconv.autotune stays this module
    (import pyconv.autotune keeps working, and so does every `from . import autotune`)."""

    def __call__(self, enabled: bool = True) -> bool:
        return set_autotune(enabled)


sys.modules[__name__].__class__ = _CallableModule
