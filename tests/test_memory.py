"""pyconv.memory: large CPU kernel outputs come from a cache of reused blocks. A block is never handed
out while any tensor (or view) of it lives, results are torch's whichever block a call gets, the
limit and empty_cache() bound what is kept, and the public calls check their arguments."""
import copy
import threading

import pytest
import torch
import torch.nn.functional as F

import pyconv.functional as PF
from pyconv import PyConvError, _C, memory

BIG = (2, 8, 400, 400)  # 10 MiB in float32: above the 8 MiB from which freed blocks are kept
MID = (2, 8, 160, 160)  # 1.6 MiB: from the cache, kept within the budget for blocks under 8 MiB
assert 4 * 2 * 8 * 400 * 400 >= _C.host_cache_keep_bytes() > 4 * 2 * 8 * 160 * 160 >= _C.host_cache_min_bytes()


@pytest.fixture(autouse=True)
def restore_limit():
    limit = memory.stats()["limit_bytes"]
    yield
    memory.set_cache_limit(limit)


def test_large_outputs_reuse_freed_blocks_and_match_torch():
    x, w = torch.randn(BIG), torch.randn(8, 8, 3, 3)
    ref = F.conv2d(x, w, padding=1)
    first = PF.conv2d(x, w, padding=1, backend="cpp")
    ptr = first.data_ptr()
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-4)
    del first
    hits = memory.stats()["hits"]
    for _ in range(3):
        y = PF.conv2d(x, w, padding=1, backend="cpp")
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
        del y
    assert memory.stats()["hits"] >= hits + 3
    again = PF.conv2d(x, w, padding=1, backend="cpp")
    assert again.data_ptr() >> 16 == ptr >> 16  # the freed (64 KiB-aligned) block came back
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-4)


def test_live_tensors_and_views_keep_their_blocks():
    a = memory.cached_empty(BIG, torch.float32).fill_(1.0)
    b = memory.cached_empty(BIG, torch.float32).fill_(2.0)
    assert a.data_ptr() != b.data_ptr()
    assert a.data_ptr() % 4096 != b.data_ptr() % 4096  # staggered: no 4 KiB aliasing between tensors
    a_ptr, view = a.data_ptr(), a[1]
    del a
    c = memory.cached_empty(BIG, torch.float32).fill_(3.0)
    assert c.data_ptr() not in (a_ptr, b.data_ptr())  # a's block is still held by its view
    assert torch.all(view == 1.0) and torch.all(b == 2.0) and torch.all(c == 3.0)


def test_shapes_dtypes_and_small_requests():
    for dtype in (torch.float32, torch.float64):
        t = memory.cached_empty((3, 5, 129, 257), dtype)
        assert t.shape == (3, 5, 129, 257) and t.dtype == dtype and t.is_contiguous()
        assert t.data_ptr() % 128 == 0
    small = memory.cached_empty((4, 4), torch.float32)  # below the floor: plain torch.empty
    assert small.shape == (4, 4)
    empty = memory.cached_empty((0, 8, 160, 160), torch.float32)
    assert empty.numel() == 0


def test_blocks_under_the_keep_floor_are_kept_up_to_their_budget():
    memory.empty_cache()
    before = memory.stats()
    t = memory.cached_empty(MID, torch.float32).fill_(1.0)
    assert t.data_ptr() % 128 == 0 and torch.all(t == 1.0)
    assert memory.stats()["in_use_bytes"] >= before["in_use_bytes"] + t.numel() * 4
    ptr = t.data_ptr()
    del t
    after = memory.stats()
    assert after["in_use_bytes"] == before["in_use_bytes"] and after["cached_bytes"] > before["cached_bytes"]
    again = memory.cached_empty(MID, torch.float32)
    assert again.data_ptr() >> 16 == ptr >> 16 and memory.stats()["hits"] > after["hits"]  # the same block
    del again
    # past the budget for small blocks, frees go back to malloc: what stays cached is bounded
    many = [memory.cached_empty(MID, torch.float32) for _ in range(3 * _C.host_cache_small_keep_bytes() // (4 << 20))]
    del many
    assert 0 < memory.stats()["cached_bytes"] <= _C.host_cache_small_keep_bytes()
    memory.empty_cache()
    assert memory.stats()["cached_bytes"] == 0


def test_past_the_small_budget_the_smallest_blocks_go_first():
    """A miss costs a fresh page per 4 KiB touched, so the budget keeps the largest small blocks:
    a loop's 4-6 MiB activations (MobileNetV2 at batch 8) stay cached while 1 MiB ones go back to
    malloc, whose heap reuses them without faults."""
    memory.empty_cache()
    budget = _C.host_cache_small_keep_bytes()
    one, five = (1 << 20) // 4, (5 << 20) // 4  # float32 elements of 1 MiB and 5 MiB
    larger = [memory.cached_empty((five,), torch.float32) for _ in range(budget // (5 << 20))]
    smaller = [memory.cached_empty((one,), torch.float32) for _ in range(budget // (1 << 20))]
    del larger, smaller  # past the budget together: the 1 MiB blocks are dropped first
    assert memory.stats()["cached_bytes"] <= budget
    hits = memory.stats()["hits"]
    again = [memory.cached_empty((five,), torch.float32) for _ in range(budget // (5 << 20))]
    assert memory.stats()["hits"] == hits + len(again)
    del again
    memory.empty_cache()


def test_limit_and_empty_cache():
    memory.set_cache_limit(0)
    t = memory.cached_empty(BIG, torch.float32)
    del t
    assert memory.stats()["cached_bytes"] == 0
    memory.set_cache_limit(1 << 30)
    t = memory.cached_empty(BIG, torch.float32)
    in_use = memory.stats()["in_use_bytes"]
    assert in_use >= t.numel() * 4
    del t
    assert memory.stats()["cached_bytes"] > 0
    memory.empty_cache()
    assert memory.stats()["cached_bytes"] == 0
    with pytest.raises(PyConvError, match="set_cache_limit"):
        memory.set_cache_limit(-1)
    with pytest.raises(TypeError):
        memory.set_cache_limit(1.5)


def test_threads_never_share_a_block():
    errors = []

    def work(value):
        try:
            for _ in range(20):
                t = memory.cached_empty(BIG, torch.float32).fill_(value)
                u = memory.cached_empty(BIG, torch.float32).fill_(-value)
                if not (torch.all(t == value) and torch.all(u == -value)):
                    errors.append(value)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(float(i + 1),)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_training_through_cached_outputs_matches_torch():
    x = torch.randn(BIG, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    gx, gw = torch.autograd.grad(PF.conv2d(x, w, padding=1, backend="cpp").square().sum(), (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x, w, padding=1).square().sum(), (x, w))
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", ["conv", "batch_norm", "max_pool", "avg_pool", "conv_bn"])
def test_cached_outputs_take_inplace_ops_under_autograd(layer):
    """A layer's output from the cache is a tensor of its own, not a view: autograd lets the next op
    modify it in place (nn.ReLU(inplace=True), a residual's +=), as it does torch's outputs (conv ->
    batch norm runs fused)."""
    import pyconv
    torch.manual_seed(0)
    ref = {"conv": lambda: torch.nn.Conv2d(8, 8, 3, padding=1, dtype=torch.float64),
           "batch_norm": lambda: torch.nn.BatchNorm2d(8, dtype=torch.float64),
           "max_pool": lambda: torch.nn.MaxPool2d(2),
           "avg_pool": lambda: torch.nn.AvgPool2d(2),
           "conv_bn": lambda: torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, dtype=torch.float64),
                                                  torch.nn.BatchNorm2d(8, dtype=torch.float64))}[layer]()
    ours = pyconv.convert(copy.deepcopy(ref))
    x = torch.randn((2, 8, 320, 320) if layer.endswith("pool") else MID, dtype=torch.float64)
    outs = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        y = model(xi)
        assert 8 * y.numel() >= _C.host_cache_min_bytes()  # from the cache
        y.mul_(2).add_(1)  # in place on the layer's output
        y.square().sum().backward()
        outs.append([y.detach(), xi.grad] + [p.grad for p in model.parameters()])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-6)  # (a conv bias before a batch norm: grad ~0)


def test_forked_children_allocate_while_the_parent_is_busy():
    """A child forked while another thread allocates and frees in a loop can use the cache (the fork
    handlers take the lock across fork() so a child never starts with it held; the race itself is too
    narrow to hit on demand, so this checks the handlers leave parent and child working). The child
    runs no kernel: OpenMP's thread pool does not survive a fork."""
    import multiprocessing as mp

    stop = threading.Event()

    def churn():
        while not stop.is_set():
            memory.cached_empty(BIG, torch.float32)
    th = threading.Thread(target=churn)
    th.start()
    try:
        ctx = mp.get_context("fork")
        for _ in range(5):
            p = ctx.Process(target=_child_allocates)
            p.start()
            p.join(60)
            if p.exitcode is None:
                p.kill()
            assert p.exitcode == 0, f"child exit code {p.exitcode} (None: it hung)"
    finally:
        stop.set()
        th.join()


def _child_allocates():
    blocks = [memory.cached_empty(BIG, torch.float32) for _ in range(3)]
    assert len({b.data_ptr() for b in blocks}) == 3
    del blocks
    memory.empty_cache()
    assert memory.stats()["cached_bytes"] == 0
