"""The machine the benchmark runs on: a description (CPU model, cores, versions) and its measured
peaks, so every rate can be shown as a % of what this machine demonstrably does.

- FMA peak: the best GFLOP/s of a 1024^3 matrix product, torch.matmul's or pyconv's own GEMM
  (pyconv._C.gemm, once it exists), whichever is faster;
- bandwidth: a large tensor copy (bytes read + bytes written per second).

Peaks are cached (peak.json next to the autotune cache) per device, threads, dtype and versions.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict

import torch

import pyconv
from pyconv import autotune

PEAK_FORMAT = 1


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _best_of(fn, sync, repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; os.cpu_count() elsewhere."""
    try:
        cores, phys = set(), "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def describe(threads: int) -> Dict[str, object]:
    info = {
        "cpu": autotune.cpu_model(),
        "isa": pyconv._C.isa(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyconv": pyconv.__version__,
        "backends": pyconv.available_backends(),
    }
    # glibc's malloc settings from the environment: torch's CPU tensors come from malloc, and with
    # the defaults glibc can hand large freed blocks back to the system, so every call of a layer
    # page-faults fresh memory (8x576x14x14 depthwise: 4.3 ms against 0.32 with
    # MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456). pyconv's own outputs of
    # 1 MiB and more come from its host cache either way.
    tuned = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") and k.endswith("_")}
    info["malloc"] = ", ".join(f"{k}={v}" for k, v in sorted(tuned.items())) or "glibc defaults"
    if hasattr(os, "getloadavg"):  # how busy the machine was: judge noisy numbers by it
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _our_gemm_gflops(n: int, dtype: torch.dtype) -> float:
    """GFLOP/s of pyconv's own GEMM (C = A . B through pyconv._C.gemm), 0 when there is none yet or
    it does not take (a, b, c) arrays; its result is checked before its speed counts."""
    gemm = getattr(pyconv._C, "gemm", None)
    if gemm is None:
        return 0.0
    try:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        c = torch.empty(n, n, dtype=dtype)
        an, bn, cn = a.numpy(), b.numpy(), c.numpy()
        gemm(an, bn, cn)
        if not torch.allclose(c, a @ b, rtol=1e-3, atol=1e-2 * n ** 0.5):
            return 0.0
        return 2 * n ** 3 / _best_of(lambda: gemm(an, bn, cn), lambda: None, 5) / 1e9
    except Exception:  # any other signature: not usable as a peak probe
        return 0.0


def _measure(device: torch.device, dtype: torch.dtype) -> Dict[str, object]:
    sync = _sync(device)
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch_gflops = 2 * n ** 3 / _best_of(lambda: torch.matmul(a, b), sync, 7) / 1e9
    ours = _our_gemm_gflops(n, dtype) if device.type == "cpu" else 0.0
    # 64 MiB each way: far beyond any last-level cache
    src = torch.empty(16 << 20, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    gbs = 2 * src.numel() * 4 / _best_of(lambda: dst.copy_(src), sync, 5) / 1e9
    return {"gflops": max(torch_gflops, ours), "gflops_source": "pyconv gemm" if ours > torch_gflops else
            "torch.matmul 1024^3", "torch_matmul_gflops": torch_gflops, "pyconv_gemm_gflops": ours,
            "gbs": gbs, "gbs_source": "torch copy 64 MiB"}


def peaks(device: torch.device, dtype: torch.dtype, threads: int, remeasure: bool = False) -> Dict[str, object]:
    """{"gflops", "gbs", ...} for this device/dtype/threads, from the cache unless remeasure."""
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{autotune.cpu_model()} ({pyconv._C.isa()})"
    key = "|".join([dev_name, str(dtype).replace("torch.", ""), f"threads={threads}", f"torch={torch.__version__}",
                    f"pyconv={pyconv.__version__}", f"gemm={hasattr(pyconv._C, 'gemm')}"])
    path = os.path.join(autotune.cache_dir(), "peak.json")
    if not remeasure:
        data = autotune.read_json_file(path)
        if data and data.get("format") == PEAK_FORMAT and isinstance(data.get("entries"), dict):
            hit = data["entries"].get(key)
            if isinstance(hit, dict) and isinstance(hit.get("gflops"), (int, float)) \
                    and isinstance(hit.get("gbs"), (int, float)) and hit["gflops"] > 0 and hit["gbs"] > 0:
                return dict(hit, cached=True)
    got = _measure(device, dtype)
    got["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    # a peak is the best this machine has shown: a remeasurement on a busy machine never lowers it
    old = (autotune.read_json_file(path) or {}).get("entries", {})
    old = old.get(key) if isinstance(old, dict) else None
    if isinstance(old, dict):
        for k in ("gflops", "gbs"):
            if isinstance(old.get(k), (int, float)) and old[k] > got[k]:
                got[k] = old[k]
                got[k + "_source"] = old.get(k + "_source", "earlier measurement")
    autotune.update_json_cache(path, PEAK_FORMAT, key, got)
    return dict(got, cached=False)
