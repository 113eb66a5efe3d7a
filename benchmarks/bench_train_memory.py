"""Peak resident memory of a training step: torch eager against pyconv.convert(model).

Each (network, side) runs in a fresh process: build the model (and convert it), then three SGD
steps at batch 8; the peak is ru_maxrss at the end, the growth is over the built model. pyconv's
host cache (pyconv.memory) keeps freed kernel buffers for reuse, so its peak is also the memory a
loop of steps keeps. Usage: python benchmarks/bench_train_memory.py [--models resnet18,...]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "cifar_resnet20")


def measure(name: str, side: str, batch: int, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    import pyconv
    from pyconv.bench import models

    torch.set_num_threads(threads)
    pyconv.set_num_threads(threads)
    torch.manual_seed(0)
    spec = models.get_model_spec(name)
    model = models.build(name)
    if side == "pyconv":
        model = pyconv.convert(model)
    x = torch.randn(batch, 3, *spec.input_hw)
    y = torch.randint(0, spec.num_classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{name:15s} {side:6s} peak {peak / 1024:6.0f} MiB, growth over the built model {(peak - base) / 1024:5.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        measure(a.one[0], a.one[1], a.batch, a.threads)
        return
    for name in a.models.split(","):
        for side in ("torch", "pyconv"):
            subprocess.run([sys.executable, __file__, "--one", name, side, "--batch", str(a.batch),
                            "--threads", str(a.threads)], check=True)


if __name__ == "__main__":
    main()
