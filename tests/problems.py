"""Shared problem lists: real network layers (spatial sizes cut down for test time where marked)
and tile-edge shapes. Tests and benchmarks read the same tables."""

# (name, N, C, H, W, K, R, S, stride, padding, groups)
REAL_LAYERS = [
    ("resnet18.conv1", 1, 3, 32, 32, 64, 7, 7, 2, 3, 1),          # stem, 224 -> 32
    ("resnet18.layer1.3x3", 2, 64, 14, 14, 64, 3, 3, 1, 1, 1),    # 56 -> 14
    ("resnet18.layer2.3x3s2", 1, 64, 14, 14, 128, 3, 3, 2, 1, 1),
    ("resnet18.layer2.down1x1", 1, 64, 14, 14, 128, 1, 1, 2, 0, 1),
    ("resnet18.layer4.3x3", 1, 512, 7, 7, 512, 3, 3, 1, 1, 1),
    ("resnet50.layer1.1x1", 2, 256, 14, 14, 64, 1, 1, 1, 0, 1),
    ("vgg16.conv1_2", 1, 64, 16, 16, 64, 3, 3, 1, 1, 1),
    ("vgg16.conv4_1", 1, 256, 7, 7, 512, 3, 3, 1, 1, 1),
    ("mobilenet_v2.dw3x3", 2, 144, 14, 14, 144, 3, 3, 1, 1, 144),
    ("mobilenet_v2.dw3x3s2", 1, 96, 14, 14, 96, 3, 3, 2, 1, 96),
    ("mobilenet_v2.pw1x1", 2, 24, 14, 14, 144, 1, 1, 1, 0, 1),
]

# Output widths around the register tiles (8 and 4 lanes, 1..4 vectors) and odd channel counts.
EDGE_WIDTHS = [1, 3, 4, 7, 8, 9, 15, 16, 17, 24, 31, 33]
