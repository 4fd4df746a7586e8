"""Image CNNs: a small digits CNN and VGG-16 / ResNet-18 for 32x32 CIFAR inputs.

Inputs are images ``[B, C, H, W]``; outputs are class logits ``[B, num_classes]``.  The digits CNN ends
in global average pooling and one linear layer, so the attribution of a logit to its last-layer units
is exact (used by the explanation module).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Three 3x3 convs (32, 64, 128 filters, one 2x2 max-pool), global average pooling and a linear
    classifier; for 1-channel digit images of any size >= 4x4 (8x8 scikit-learn digits by default)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


VGG16_CFG: Sequence[int | str] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs (13 convs, 5 pools, one linear classifier on 512)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, cfg=VGG16_CFG) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = max(1, round(int(v) * width))
                layers += [
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem (no max-pool), four stages of two basic blocks (64-512
    channels), global average pooling, linear classifier."""

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, layers: Sequence[int] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for i, (cout, n) in enumerate(zip(widths, layers, strict=True)):
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def _div8(c: float) -> int:
    """A channel count rounded to the nearest multiple of 8 (at least 8), as MobileNets round."""
    return max(8, int(c + 4) // 8 * 8)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: a 1x1 expand conv (``expand`` > 1), ReLU6, a 3x3 depthwise conv,
    ReLU6, a 1x1 projection (linear: no activation); the input added back where the shapes
    allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) for 32x32 inputs: a stride-1 3x3 stem and the second
    stage at stride 1 (the CIFAR version's 4 x 4 last plane), 17 inverted-residual blocks with
    ReLU6, a 1x1 conv to 1280 channels, global average pooling, a linear classifier.  ``width``
    scales every channel count (rounded to multiples of 8; the last conv keeps at least 1280)."""

    CFG: Sequence[tuple[int, int, int, int]] = (  # expand, channels, blocks, first stride
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        cin = _div8(32 * width)
        layers: list[nn.Module] = [
            nn.Conv2d(3, cin, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(),
        ]
        for t, c, n, s in self.CFG:
            cout = _div8(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _div8(1280 * max(1.0, width))
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v2_cifar(num_classes: int = 10, width: float = 1.0) -> MobileNetV2Cifar:
    return MobileNetV2Cifar(num_classes=num_classes, width=width)


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> DigitsCNN:
    return DigitsCNN(num_classes=num_classes, in_channels=in_channels, width=width)


CONCEPT_CFG: Sequence[int | str] = (16, "M", 32, "M", 64, 64, "M", 128, 128)


def concept_cnn(num_classes: int = 4, width: float = 1.0) -> VGGCifar:
    """A small VGG (6 convs with BatchNorm, 3 pools, GAP + linear) for the 32x32 synthetic concept
    images of :class:`edgeguard.explain.SyntheticConcepts`: 128 units at 4x4 in its last conv block."""
    return VGGCifar(num_classes=num_classes, width=width, cfg=CONCEPT_CFG)


def vgg16_cifar(num_classes: int = 10, width: float = 1.0) -> VGGCifar:
    return VGGCifar(num_classes=num_classes, width=width)


def resnet18_cifar(num_classes: int = 10, width: float = 1.0) -> ResNetCifar:
    return ResNetCifar(num_classes=num_classes, width=width)
