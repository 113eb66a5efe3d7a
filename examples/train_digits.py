"""Train a small ResNet on scikit-learn's digits (8x8 images, shipped with scikit-learn: no
download) with torch's layers and with pyconv.convert, and print accuracy and time side by side.

    pip install scikit-learn && python examples/train_digits.py [--epochs 5]
"""
import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyconv


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class DigitsResNet(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(width * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def load_digits():
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n = int(0.8 * len(y))
    return (x[:n], y[:n]), (x[n:], y[n:])


def train(model, data, epochs, batch=64):
    (xtr, ytr), (xte, yte) = data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for i in range(0, len(ytr), batch):
            opt.zero_grad()
            F.cross_entropy(model(xtr[i:i + batch]), ytr[i:i + batch]).backward()
            opt.step()
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return acc, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data = load_digits()
    torch.manual_seed(0)
    base = DigitsResNet()
    models = {"torch": copy.deepcopy(base), "pyconv": pyconv.convert(copy.deepcopy(base))}
    print(f"{'model':8} {'test accuracy':>14} {'train time s':>13}")
    for name, model in models.items():
        acc, t = train(model, data, args.epochs)
        print(f"{name:8} {acc:14.3f} {t:13.2f}")


if __name__ == "__main__":
    main()
