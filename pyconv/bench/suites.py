"""Named layer suites for pyconv-bench and benchmarks/: the distinct convolution and pooling layers
of real networks at their real sizes (224x224 ImageNet input, 32x32 for CIFAR), batch size left
to the command line.

Ops map onto layers: conv2d, conv2d_train and conv_bn_relu run on ConvLayers; batch_norm runs on
each ConvLayer's *output* (where the network's BatchNorm2d sits); max_pool2d / avg_pool2d run on
the PoolLayers of their kind.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple, Union


class ConvLayer(NamedTuple):
    name: str
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def out_hw(self) -> Tuple[int, int]:
        return ((self.H + 2 * self.padding - self.R) // self.stride + 1,
                (self.W + 2 * self.padding - self.S) // self.stride + 1)

    def describe(self, n: int) -> str:
        s = f"{n}x{self.C}x{self.H}x{self.W} k{self.K} {self.R}x{self.S}"
        if self.stride != 1:
            s += f" s{self.stride}"
        if self.padding:
            s += f" p{self.padding}"
        if self.groups != 1:
            s += f" g{self.groups}"
        return s


class PoolLayer(NamedTuple):
    name: str
    kind: str  # "max" or "avg"
    C: int
    H: int
    W: int
    kernel: int
    stride: int
    padding: int = 0

    def describe(self, n: int) -> str:
        s = f"{n}x{self.C}x{self.H}x{self.W} {self.kernel}x{self.kernel} s{self.stride}"
        return s + (f" p{self.padding}" if self.padding else "")


Layer = Union[ConvLayer, PoolLayer]


class Suite(NamedTuple):
    name: str
    batch: int  # default batch size
    layers: List[Layer]
    about: str


def _c(name, C, HW, K, k, stride=1, padding=None, groups=1):
    return ConvLayer(name, C, HW, HW, K, k, k, stride, k // 2 if padding is None else padding, groups)


TINY = Suite("tiny", 1, [
    _c("tiny.3x3", 8, 12, 16, 3),
    _c("tiny.1x1s2", 16, 12, 8, 1, 2),
    _c("tiny.dw3x3", 8, 12, 8, 3, groups=8),
    PoolLayer("tiny.maxpool", "max", 8, 12, 12, 3, 2, 1),
    PoolLayer("tiny.avgpool", "avg", 8, 12, 12, 2, 2),
], "smoke-test sizes (the tests run this)")

QUICK = Suite("quick", 1, [
    _c("resnet18.layer1.3x3", 64, 56, 64, 3),
    _c("resnet18.layer3.3x3", 256, 14, 256, 3),
    _c("resnet18.layer2.down1x1", 64, 56, 128, 1, 2),
    _c("mobilenet_v2.dw3x3", 144, 56, 144, 3, groups=144),
    _c("mobilenet_v2.pw1x1", 24, 56, 144, 1),
    PoolLayer("resnet18.maxpool", "max", 64, 112, 112, 3, 2, 1),
    PoolLayer("vgg16.pool3", "max", 256, 56, 56, 2, 2),
    PoolLayer("resnet18.avgpool", "avg", 512, 7, 7, 7, 7),
    PoolLayer("cifar.avgpool2x2", "avg", 128, 32, 32, 2, 2),
], "one representative of each layer kind, batch 1 (default; well under a minute)")

RESNET18 = Suite("resnet18", 1, [
    _c("resnet18.conv1", 3, 224, 64, 7, 2),
    PoolLayer("resnet18.maxpool", "max", 64, 112, 112, 3, 2, 1),
    _c("resnet18.layer1.3x3", 64, 56, 64, 3),
    _c("resnet18.layer2.3x3s2", 64, 56, 128, 3, 2),
    _c("resnet18.layer2.down1x1", 64, 56, 128, 1, 2),
    _c("resnet18.layer2.3x3", 128, 28, 128, 3),
    _c("resnet18.layer3.3x3s2", 128, 28, 256, 3, 2),
    _c("resnet18.layer3.down1x1", 128, 28, 256, 1, 2),
    _c("resnet18.layer3.3x3", 256, 14, 256, 3),
    _c("resnet18.layer4.3x3s2", 256, 14, 512, 3, 2),
    _c("resnet18.layer4.down1x1", 256, 14, 512, 1, 2),
    _c("resnet18.layer4.3x3", 512, 7, 512, 3),
    PoolLayer("resnet18.avgpool", "avg", 512, 7, 7, 7, 7),
], "every distinct ResNet-18 layer (torchvision)")

RESNET50 = Suite("resnet50", 1, [
    _c("resnet50.conv1", 3, 224, 64, 7, 2),
    PoolLayer("resnet50.maxpool", "max", 64, 112, 112, 3, 2, 1),
    _c("resnet50.layer1.reduce1x1", 64, 56, 64, 1),
    _c("resnet50.layer1.3x3", 64, 56, 64, 3),
    _c("resnet50.layer1.expand1x1", 64, 56, 256, 1),
    _c("resnet50.layer1.reduce1x1b", 256, 56, 64, 1),
    _c("resnet50.layer2.reduce1x1", 256, 56, 128, 1),
    _c("resnet50.layer2.3x3s2", 128, 56, 128, 3, 2),
    _c("resnet50.layer2.down1x1", 256, 56, 512, 1, 2),
    _c("resnet50.layer2.expand1x1", 128, 28, 512, 1),
    _c("resnet50.layer2.reduce1x1b", 512, 28, 128, 1),
    _c("resnet50.layer2.3x3", 128, 28, 128, 3),
    _c("resnet50.layer3.reduce1x1", 512, 28, 256, 1),
    _c("resnet50.layer3.3x3s2", 256, 28, 256, 3, 2),
    _c("resnet50.layer3.down1x1", 512, 28, 1024, 1, 2),
    _c("resnet50.layer3.expand1x1", 256, 14, 1024, 1),
    _c("resnet50.layer3.reduce1x1b", 1024, 14, 256, 1),
    _c("resnet50.layer3.3x3", 256, 14, 256, 3),
    _c("resnet50.layer4.reduce1x1", 1024, 14, 512, 1),
    _c("resnet50.layer4.3x3s2", 512, 14, 512, 3, 2),
    _c("resnet50.layer4.down1x1", 1024, 14, 2048, 1, 2),
    _c("resnet50.layer4.expand1x1", 512, 7, 2048, 1),
    _c("resnet50.layer4.reduce1x1b", 2048, 7, 512, 1),
    _c("resnet50.layer4.3x3", 512, 7, 512, 3),
    PoolLayer("resnet50.avgpool", "avg", 2048, 7, 7, 7, 7),
], "every distinct ResNet-50 (v1.5) layer")

VGG16 = Suite("vgg16", 1, [
    _c("vgg16.conv1_1", 3, 224, 64, 3),
    _c("vgg16.conv1_2", 64, 224, 64, 3),
    PoolLayer("vgg16.pool1", "max", 64, 224, 224, 2, 2),
    _c("vgg16.conv2_1", 64, 112, 128, 3),
    _c("vgg16.conv2_2", 128, 112, 128, 3),
    PoolLayer("vgg16.pool2", "max", 128, 112, 112, 2, 2),
    _c("vgg16.conv3_1", 128, 56, 256, 3),
    _c("vgg16.conv3_2", 256, 56, 256, 3),
    PoolLayer("vgg16.pool3", "max", 256, 56, 56, 2, 2),
    _c("vgg16.conv4_1", 256, 28, 512, 3),
    _c("vgg16.conv4_2", 512, 28, 512, 3),
    PoolLayer("vgg16.pool4", "max", 512, 28, 28, 2, 2),
    _c("vgg16.conv5_1", 512, 14, 512, 3),
    PoolLayer("vgg16.pool5", "max", 512, 14, 14, 2, 2),
    PoolLayer("vgg16.avgpool", "avg", 512, 7, 7, 7, 7),
], "every distinct VGG-16 layer")

MOBILENET = Suite("mobilenet", 1, [
    _c("mobilenet_v2.stem3x3s2", 3, 224, 32, 3, 2),
    _c("mobilenet_v2.b0.dw3x3", 32, 112, 32, 3, groups=32),
    _c("mobilenet_v2.b0.project", 32, 112, 16, 1),
    _c("mobilenet_v2.b1.expand", 16, 112, 96, 1),
    _c("mobilenet_v2.b1.dw3x3s2", 96, 112, 96, 3, 2, groups=96),
    _c("mobilenet_v2.b1.project", 96, 56, 24, 1),
    _c("mobilenet_v2.b2.expand", 24, 56, 144, 1),
    _c("mobilenet_v2.b2.dw3x3", 144, 56, 144, 3, groups=144),
    _c("mobilenet_v2.b2.project", 144, 56, 24, 1),
    _c("mobilenet_v2.b3.dw3x3s2", 144, 56, 144, 3, 2, groups=144),
    _c("mobilenet_v2.b3.project", 144, 28, 32, 1),
    _c("mobilenet_v2.b4.expand", 32, 28, 192, 1),
    _c("mobilenet_v2.b4.dw3x3", 192, 28, 192, 3, groups=192),
    _c("mobilenet_v2.b6.dw3x3", 384, 14, 384, 3, groups=384),
    _c("mobilenet_v2.b6.project", 384, 14, 64, 1),
    _c("mobilenet_v2.b10.dw3x3", 576, 14, 576, 3, groups=576),
    _c("mobilenet_v2.b13.dw3x3", 960, 7, 960, 3, groups=960),
    _c("mobilenet_v2.b13.project", 960, 7, 320, 1),
    _c("mobilenet_v2.head1x1", 320, 7, 1280, 1),
    PoolLayer("mobilenet_v2.avgpool", "avg", 1280, 7, 7, 7, 7),
], "MobileNetV2: depthwise 3x3 and pointwise 1x1 layers")

CIFAR = Suite("cifar", 16, [
    _c("resnet20.conv1", 3, 32, 16, 3),
    _c("resnet20.stage1.3x3", 16, 32, 16, 3),
    _c("resnet20.stage2.3x3s2", 16, 32, 32, 3, 2),
    _c("resnet20.stage2.3x3", 32, 16, 32, 3),
    _c("resnet20.stage3.3x3s2", 32, 16, 64, 3, 2),
    _c("resnet20.stage3.3x3", 64, 8, 64, 3),
    _c("vgg_cifar.conv2", 64, 32, 64, 3),
    _c("vgg_cifar.conv4", 128, 16, 128, 3),
    PoolLayer("vgg_cifar.pool1", "max", 64, 32, 32, 2, 2),
    PoolLayer("resnet20.avgpool", "avg", 64, 8, 8, 8, 8),
], "CIFAR-10 networks (32x32 input), batch 16")

SUITES: Dict[str, Suite] = {s.name: s for s in (QUICK, RESNET18, RESNET50, VGG16, MOBILENET, CIFAR, TINY)}
ALIASES = {"mobilenet_v2": "mobilenet"}


def get_suite(name: str) -> Suite:
    """The suite called name (or an alias); KeyError with the known names otherwise."""
    key = ALIASES.get(name, name)
    if key not in SUITES:
        raise KeyError(f"unknown suite {name!r}; choose from {', '.join(list(SUITES) + list(ALIASES))}")
    return SUITES[key]


def conv_layers(suite: Suite) -> List[ConvLayer]:
    return [layer for layer in suite.layers if isinstance(layer, ConvLayer)]


def pool_layers(suite: Suite, kind: str) -> List[PoolLayer]:
    return [layer for layer in suite.layers if isinstance(layer, PoolLayer) and layer.kind == kind]
