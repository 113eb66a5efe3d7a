"""Thread safety: 4 Python threads calling every op concurrently (forward and backward), while the
main thread changes pyconv.set_num_threads, give exactly the results of serial calls.

Bitwise equality holds at a fixed thread count; while the count changes, a reduction may be split
differently, so results must then agree to rounding (float64, relative 1e-12)."""
import threading

import pytest
import torch

import pyconv
import pyconv.functional as PF

THREAD_BACKENDS = [b for b in ("cpp", "numba") if b in pyconv.available_backends()]


def make_ops(backend, dtype):
    """name -> zero-argument callable returning a tuple of tensors (outputs and gradients)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 11, 10, generator=g, dtype=dtype)
    w = torch.randn(8, 6, 3, 3, generator=g, dtype=dtype)
    wg = torch.randn(8, 3, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(8, generator=g, dtype=dtype)
    gy = torch.randn(2, 8, 11, 10, generator=g, dtype=dtype)
    bn_w, bn_b = torch.rand(6, generator=g, dtype=dtype) + 0.5, torch.randn(6, generator=g, dtype=dtype)
    rm0, rv0 = torch.randn(8, generator=g, dtype=dtype), torch.rand(8, generator=g, dtype=dtype) + 0.5

    def conv(algo, weight=w, groups=1):
        def run():
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, weight, b))
            y = PF.conv2d(xs, ws, bs, padding=1, groups=groups, algo=algo, backend=backend)
            return (y.detach(),) + torch.autograd.grad(y, (xs, ws, bs), gy)
        return run

    def max_pool():
        xs = x.clone().requires_grad_()
        y, idx = PF.max_pool2d(xs, 3, 2, 1, dilation=1, ceil_mode=True, return_indices=True, backend=backend)
        return (y.detach(), idx) + torch.autograd.grad(y, xs, torch.ones_like(y))

    def avg_pool():
        xs = x.clone().requires_grad_()
        y = PF.avg_pool2d(xs, (3, 2), (2, 1), (1, 1), count_include_pad=False, backend=backend)
        return (y.detach(),) + torch.autograd.grad(y, xs, torch.ones_like(y))

    def batch_norm():
        xs = x.clone().requires_grad_()
        rm, rv = torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)
        y = PF.batch_norm(xs, rm, rv, bn_w, bn_b, True, 0.1, 1e-5, backend=backend)
        return (y.detach(), rm, rv) + torch.autograd.grad(y, xs, gy[:, :6])

    def conv_bn_relu():
        xs = x.clone().requires_grad_()
        rm, rv = rm0.clone(), rv0.clone()
        z = PF.conv_bn_relu(xs, w, b, torch.ones(8, dtype=dtype), torch.zeros(8, dtype=dtype), rm, rv, padding=1,
                            training=True, backend=backend)
        return (z.detach(), rm, rv) + torch.autograd.grad(z, xs, gy)

    ops = {"conv_direct": conv("direct"), "conv_im2col": conv("im2col"), "conv_groups": conv("im2col", wg, 2),
           "max_pool2d": max_pool, "avg_pool2d": avg_pool, "batch_norm": batch_norm, "conv_bn_relu": conv_bn_relu}
    if backend == "cpp":
        ops["conv_winograd"] = conv("winograd_2x2")
        ops["conv_winograd_4x4"] = conv("winograd_4x4")
    return ops


def hammer(ops, reps, n_threads=4, thread_counts=None):
    """Runs every op `reps` times in each of n_threads threads; returns [(name, result)] per call and
    any exception. Meanwhile the main thread cycles pyconv.set_num_threads through thread_counts."""
    results, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(n_threads + 1)

    def worker(k):
        names = list(ops)
        try:
            start.wait()
            for r in range(reps):
                for name in names[k % len(names):] + names[:k % len(names)]:  # different orders per thread
                    out = ops[name]()
                    with lock:
                        results.append((name, out))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    i = 0
    while any(t.is_alive() for t in threads):
        if thread_counts:
            pyconv.set_num_threads(thread_counts[i % len(thread_counts)])
            i += 1
        for t in threads:
            t.join(timeout=0.002)
    return results, errors


@pytest.mark.parametrize("backend", THREAD_BACKENDS)
def test_concurrent_calls_match_serial(backend):
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(2)
        ops = make_ops(backend, torch.float32)
        serial = {name: fn() for name, fn in ops.items()}
        results, errors = hammer(ops, reps=3)
        assert not errors, errors[0]
        assert len(results) == 4 * 3 * len(ops)
        for name, out in results:  # same thread count: bitwise identical
            for a, e in zip(out, serial[name]):
                assert torch.equal(a, e), f"{backend} {name}: concurrent result differs from serial"

        ops = make_ops(backend, torch.float64)
        serial = {name: fn() for name, fn in ops.items()}
        results, errors = hammer(ops, reps=2, thread_counts=[1, 3, 2])
        assert not errors, errors[0]
        for name, out in results:
            for a, e in zip(out, serial[name]):
                if a.dtype == torch.int64:
                    assert torch.equal(a, e), f"{backend} {name}: indices differ"
                else:
                    err = (a - e).norm() / max(e.norm().item(), 1e-300)
                    assert err <= 1e-12, f"{backend} {name}: relative error {err:.3g} while set_num_threads changed"
    finally:
        pyconv.set_num_threads(before)



@pytest.mark.skipif("numba" not in pyconv.available_backends(), reason="numba not available")
def test_numba_threading_layer_keeps_torch_thread_count():
    """numba's OpenMP layer resets the calling thread's OpenMP thread count when it starts, which is
    torch's count too; pyconv starts it at backend load and puts torch's back. Fresh process: the layer
    starts once per process."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); import pyconv, pyconv.functional as PF; "
            "x = torch.randn(2, 4, 16, 16); w = torch.randn(4, 4, 3, 3); "
            "PF.conv2d(x, w, padding=1, backend='numba'); pyconv.set_num_threads(1); "
            "print(torch.get_num_threads())")
    env = dict(__import__("os").environ, OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1", out.stdout


def _child_runs_kernels():
    # torch's own parallel ops would hang here for the same reason; a DataLoader worker sets this too
    torch.set_num_threads(1)
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    y = PF.conv2d(x, w, padding=1, algo="im2col", backend="cpp")
    assert pyconv.get_num_threads() == 1
    ref = PF.conv2d(x, w, padding=1, algo="direct", backend="cpp")
    assert float(np.abs(y - ref).max()) < 1e-3


def test_forked_child_runs_kernels_on_one_thread():
    """OpenMP's thread pool does not survive fork(): a forked child of a process that ran kernels
    would hang in its first parallel region. The child runs them on one thread instead."""
    import multiprocessing as mp

    x, w = torch.randn(2, 16, 40, 40), torch.randn(16, 16, 3, 3)
    PF.conv2d(x, w, padding=1, backend="cpp")  # the parent's thread pool exists
    p = mp.get_context("fork").Process(target=_child_runs_kernels)
    p.start()
    p.join(30)
    if p.exitcode is None:
        p.kill()
    assert p.exitcode == 0, f"child exit code {p.exitcode} (None: it hung)"
    assert pyconv.get_num_threads() >= 1  # the parent keeps its own count
