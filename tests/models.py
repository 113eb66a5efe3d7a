"""Small networks shared by the layer, convert, compile and DDP tests."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """A ResNet in miniature: stem conv-BN-ReLU, max pool, two basic blocks, avg pool, linear."""

    def __init__(self, in_ch=1, classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.layer2(self.layer1(x))
        x = self.avg(x)
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


class EveryPattern(nn.Module):
    """Every fused pattern: conv-BN-ReLU, conv-BN-ReLU6, conv-BN (no activation, a downsample), the
    ResNet tail relu(bn(conv(y)) + identity) written with +=, and the MobileNetV2 tail x + bn(conv(y))."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=True), nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.conv3, self.bn3 = nn.Conv2d(c, c, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(c)
        self.act6 = nn.ReLU6()
        self.conv4, self.bn4 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.down(x)
        y = self.relu(out)
        z = self.act6(self.bn3(self.conv3(y)))
        z = y + self.bn4(self.conv4(z))
        return self.fc(torch.flatten(self.pool(z), 1))
