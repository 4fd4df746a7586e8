"""Video CNNs: C3D (Tran et al., ICCV 2015) and R(2+1)D-18 (Tran et al., CVPR 2018).

Inputs are clips ``[B, 3, T, H, W]`` (channels, frames, height, width) with values in [0, 1] or
normalised by the caller; outputs are class logits ``[B, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_common(num_classes: int, width: float, clip_size: Sequence[int]) -> tuple[int, int, int]:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not (isinstance(width, int | float) and width > 0):
        raise ConfigError(f"width must be a positive channel multiplier, got {width!r}")
    clip = tuple(int(s) for s in clip_size)
    if len(clip) != 3 or any(s < 1 for s in clip):
        raise ConfigError(f"clip_size must be (frames, height, width), got {clip_size!r}")
    return clip  # type: ignore[return-value]


class C3D(nn.Module):
    """C3D: 8 Conv3d 3x3x3 layers (64, 128, 256, 256, 512, 512, 512, 512 filters at width 1), five
    max-pools (the first spatial only; pool5 pads H and W by 1), fc6/fc7 of 4096 units and the
    classifier, as in the C3D paper and its Sports-1M/UCF101 release.

    Args:
        num_classes: number of output classes.
        width: channel multiplier for every conv and fc layer (0.25 gives a small C3D).
        clip_size: (T, H, W) of the input clips; T must be at least 16 for the five temporal
            poolings (16 -> 1), H and W at least 16.
        dropout: dropout probability after fc6 and fc7.
        batch_norm: add BatchNorm3d after every conv (not in the paper; trains much faster from
            scratch, and folds into the conv for inference).
    """

    conv_names = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")

    def __init__(
        self,
        num_classes: int = 101,
        width: float = 1.0,
        clip_size: Sequence[int] = (16, 112, 112),
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        t, h, w = _check_common(num_classes, width, clip_size)
        if t < 16 or h < 16 or w < 16:
            raise ConfigError(f"C3D needs clips of at least 16x16x16 (T, H, W), got {clip_size!r}")
        chans = [_scaled(c, width) for c in (64, 128, 256, 256, 512, 512, 512, 512)]
        cin = 3
        for name, cout in zip(self.conv_names, chans, strict=True):
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1, bias=not batch_norm))
            bn = nn.BatchNorm3d(cout) if batch_norm else nn.Identity()
            setattr(self, name.replace("conv", "bn"), bn)
            cin = cout
        self.pool1 = nn.MaxPool3d((1, 2, 2), (1, 2, 2))
        self.pool2 = nn.MaxPool3d(2, 2)
        self.pool3 = nn.MaxPool3d(2, 2)
        self.pool4 = nn.MaxPool3d(2, 2)
        self.pool5 = nn.MaxPool3d(2, 2, padding=(0, 1, 1))
        self._pool_after = {
            "conv1": self.pool1,
            "conv2": self.pool2,
            "conv3b": self.pool3,
            "conv4b": self.pool4,
            "conv5b": self.pool5,
        }
        with torch.no_grad():
            feat = self.features(torch.zeros(1, 3, t, h, w)).numel()
        fc = _scaled(4096, width)
        self.fc6 = nn.Linear(feat, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.conv_names:
            x = torch.relu(getattr(self, name.replace("conv", "bn"))(getattr(self, name)(x)))
            if name in self._pool_after:
                x = self._pool_after[name](x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


class Conv2Plus1D(nn.Sequential):
    """A (2+1)D factorised 3x3x3 convolution: spatial (1,3,3) conv to ``mid`` channels, BN, ReLU, then
    temporal (3,1,1) conv.  ``mid`` follows the paper so the parameter count matches a full 3D conv:
    ``mid = floor(t*d^2*Cin*Cout / (d^2*Cin + t*Cout))`` with t = d = 3."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


def r2plus1d_mid_channels(cin: int, cout: int) -> int:
    return (cin * cout * 3 * 3 * 3) // (cin * 3 * 3 + 3 * cout)


class R2Plus1DBlock(nn.Module):
    """Basic residual block of two (2+1)D convolutions; a 1x1x1 strided projection when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            Conv2Plus1D(cin, cout, r2plus1d_mid_channels(cin, cout), stride),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            Conv2Plus1D(cout, cout, r2plus1d_mid_channels(cout, cout)), nn.BatchNorm3d(cout)
        )
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class R2Plus1D(nn.Module):
    """R(2+1)D-18: a (2+1)D stem ((1,7,7) conv to 45 channels, stride (1,2,2), then (3,1,1) conv to
    64), four stages of two residual blocks (64, 128, 256, 512 channels; stages 2-4 stride 2 in space
    and time), global average pooling and a linear classifier.  Works for any clip size."""

    def __init__(
        self, num_classes: int = 101, width: float = 1.0, layers: Sequence[int] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        _check_common(num_classes, width, (1, 1, 1))
        widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
        stem_mid = _scaled(45, width)
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        stages = []
        for i, (cout, n) in enumerate(zip(widths, layers, strict=True)):
            blocks = [R2Plus1DBlock(cin, cout, stride=1 if i == 0 else 2)]
            blocks += [R2Plus1DBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def c3d(
    num_classes: int = 101,
    width: float = 1.0,
    clip_size: Sequence[int] = (16, 112, 112),
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> C3D:
    """C3D for clips of ``clip_size`` = (T, H, W); 38.5 GMACs at width 1 on 16x112x112."""
    return C3D(num_classes, width, clip_size, dropout, batch_norm)


def r2plus1d_18(num_classes: int = 101, width: float = 1.0) -> R2Plus1D:
    """R(2+1)D-18 with the paper's mid-channel formula; any clip size."""
    return R2Plus1D(num_classes=num_classes, width=width)
