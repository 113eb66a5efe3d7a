"""A converted model trains under DistributedDataParallel (gloo, 2 processes on 127.0.0.1) with the
same gradients as the torch model under DDP."""
import copy
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    import pyconv
    from models import TinyResNet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    pyconv.set_num_threads(1)
    torch.manual_seed(0)
    ref = TinyResNet()
    ours = pyconv.convert(copy.deepcopy(ref), fuse=True)
    ddp_ref = torch.nn.parallel.DistributedDataParallel(ref)
    ddp_ours = torch.nn.parallel.DistributedDataParallel(ours)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    x, t = torch.randn(4, 1, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    F.cross_entropy(ddp_ref(x), t).backward()
    F.cross_entropy(ddp_ours(x), t).backward()
    ref_grads = [p.grad for p in ref.parameters()]
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    worst = 0.0
    for (name, p), g_ref in zip(ref.named_parameters(), ref_grads):
        # fused layers rename parameters; match the rest by name
        if name in ours_grads:
            worst = max(worst, ((ours_grads[name] - g_ref).norm() / (g_ref.norm() + 1e-12)).item())
    total = sum(g.norm() for g in ours_grads.values())
    out[rank] = (worst, float(total))
    dist.destroy_process_group()


def test_ddp_gloo_two_processes():
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    out = manager.dict()
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    assert set(out.keys()) == {0, 1}
    for rank in (0, 1):
        worst, total = out[rank]
        assert worst < 1e-3, f"rank {rank}: gradient relative error {worst}"
        assert total > 0
    # DDP all-reduces: both ranks end with identical gradients
    assert abs(out[0][1] - out[1][1]) <= 1e-4 * abs(out[0][1])
