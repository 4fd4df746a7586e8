from __future__ import annotations

import pytest
import torch

from edgeguard.models import (
    build,
    c3d,
    count_flops,
    digits_cnn,
    r2plus1d_18,
    resnet18_cifar,
    vgg16_cifar,
)
from edgeguard.models.video import r2plus1d_mid_channels


def conv3d_macs(cin, cout, k, out):
    return cin * cout * k[0] * k[1] * k[2] * out[0] * out[1] * out[2]


def test_c3d_flops_equal_hand_count():
    report = count_flops(c3d(), (1, 3, 16, 112, 112))
    k = (3, 3, 3)
    hand = {
        "conv1": conv3d_macs(3, 64, k, (16, 112, 112)),
        "conv2": conv3d_macs(64, 128, k, (16, 56, 56)),
        "conv3a": conv3d_macs(128, 256, k, (8, 28, 28)),
        "conv3b": conv3d_macs(256, 256, k, (8, 28, 28)),
        "conv4a": conv3d_macs(256, 512, k, (4, 14, 14)),
        "conv4b": conv3d_macs(512, 512, k, (4, 14, 14)),
        "conv5a": conv3d_macs(512, 512, k, (2, 7, 7)),
        "conv5b": conv3d_macs(512, 512, k, (2, 7, 7)),
        "fc6": 512 * 4 * 4 * 4096,
        "fc7": 4096 * 4096,
        "fc8": 4096 * 101,
    }
    assert {layer.name: layer.dense_macs for layer in report.layers} == hand
    assert report.dense_macs == sum(hand.values())
    assert round(report.dense_macs / 1e9, 1) == 38.5
    assert report.kept_macs == report.dense_macs and report.reduction == 1.0


def test_tiny_r2plus1d_flops_equal_hand_count():
    # width 1/8 (channels 8, 16, 32, 64; stem 6), clip 4x16x16
    model = r2plus1d_18(num_classes=5, width=0.125)
    report = count_flops(model, (1, 3, 4, 16, 16))
    hand = 0
    hand += conv3d_macs(3, 6, (1, 7, 7), (4, 8, 8)) + conv3d_macs(6, 8, (3, 1, 1), (4, 8, 8))
    sizes = {1: (4, 8, 8), 2: (2, 4, 4), 3: (1, 2, 2), 4: (1, 1, 1)}
    cin = 8
    prev_t = 4
    for stage, cout in zip((1, 2, 3, 4), (8, 16, 32, 64), strict=True):
        out = sizes[stage]
        for block in range(2):
            bin_ = cin if block == 0 else cout
            mid1 = r2plus1d_mid_channels(bin_, cout)
            mid2 = r2plus1d_mid_channels(cout, cout)
            strided = stage > 1 and block == 0
            # the spatial conv strides in space only; the temporal conv after it strides in time
            mid_out = (prev_t if strided else out[0], out[1], out[2])
            hand += conv3d_macs(bin_, mid1, (1, 3, 3), mid_out) + conv3d_macs(
                mid1, cout, (3, 1, 1), out
            )
            hand += conv3d_macs(cout, mid2, (1, 3, 3), out) + conv3d_macs(
                mid2, cout, (3, 1, 1), out
            )
            if bin_ != cout:
                hand += conv3d_macs(bin_, cout, (1, 1, 1), out)
        cin = cout
        prev_t = out[0]
    hand += 64 * 5
    assert report.dense_macs == hand


def test_r2plus1d_mid_channels_follow_the_paper():
    # Tran et al. 2018: M = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)); 64->64 gives 144
    assert r2plus1d_mid_channels(64, 64) == 144
    assert r2plus1d_mid_channels(64, 128) == 230
    n_params = sum(p.numel() for p in r2plus1d_18(num_classes=400).parameters())
    assert 33.0e6 < n_params < 33.6e6  # the paper's table: 33.3M


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("c3d", {"num_classes": 7, "width": 0.125, "clip_size": [16, 32, 40]}, (2, 3, 16, 32, 40)),
        ("r2plus1d_18", {"num_classes": 7, "width": 0.125}, (2, 3, 8, 24, 24)),
        ("digits_cnn", {}, (2, 1, 8, 8)),
        ("digits_cnn", {}, (2, 1, 16, 16)),
        ("vgg16_cifar", {"width": 0.125}, (2, 3, 32, 32)),
        ("resnet18_cifar", {"width": 0.125}, (2, 3, 32, 32)),
        ("mobilenet_v2_cifar", {"width": 0.25}, (2, 3, 32, 32)),
    ],
)
def test_models_run_on_their_inputs(name, kwargs, shape):
    model = build(name, **kwargs)
    out = model(torch.rand(shape))
    assert out.shape == (2, kwargs.get("num_classes", 10))
    assert model.edgeguard_arch == {"name": name, "kwargs": kwargs}


def test_model_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model 'c4d'"):
        build("c4d")
    with pytest.raises(ValueError, match="at least 16x16x16"):
        c3d(clip_size=(8, 112, 112))
    with pytest.raises(ValueError, match="width"):
        c3d(width=0)
    with pytest.raises(ValueError, match="takes no setting"):
        build("c3d", depth=3)


def test_flops_counts_masks():
    model = digits_cnn()
    dense = count_flops(model, (1, 1, 8, 8))
    mask = torch.zeros_like(model.fc.weight, dtype=torch.bool)
    mask[:5] = True
    report = count_flops(model, (1, 1, 8, 8), masks={"fc": mask})
    assert report["fc"].kept_macs == report["fc"].dense_macs // 2
    assert report.kept_macs == dense.dense_macs - report["fc"].dense_macs // 2
    assert vgg16_cifar and resnet18_cifar  # imported names exist


def test_mobilenet_v2_has_the_papers_blocks_and_size():
    from edgeguard.models import MobileNetV2Cifar
    from edgeguard.models.vision import InvertedResidual

    model = build("mobilenet_v2_cifar")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels for m in depthwise)
    assert isinstance(model, MobileNetV2Cifar)
    n_params = sum(p.numel() for p in model.parameters())
    assert 2.2e6 < n_params < 2.3e6  # the paper's 3.4M less ImageNet's 1280 x 1000 classifier
