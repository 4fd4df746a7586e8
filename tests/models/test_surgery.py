"""Model surgery: a sliced conv equals the original conv's selected filters and input channels
(masks applied), a depthwise conv keeps one group per kept channel, and other grouped convs are
refused; layer_inputs reads each layer's first input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.errors import ConfigError
from edgeguard.masks import set_mask
from edgeguard.models.surgery import layer_inputs, set_module, slice_conv


def test_slice_conv_equals_the_selected_part_of_the_masked_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1).eval()
    mask = torch.rand(conv.weight.shape) > 0.3
    set_mask(conv, mask)
    out_keep, in_keep = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4])
    x = torch.randn(2, 6, 7, 7)
    new = slice_conv(conv, out_keep, in_keep)
    weight = (conv.weight * mask)[out_keep][:, in_keep]
    want = F.conv2d(x[:, in_keep], weight, conv.bias[out_keep], padding=1)
    assert torch.allclose(new(x[:, in_keep]), want, atol=1e-6) and not new.training


def test_slice_conv_keeps_one_group_per_depthwise_channel_and_refuses_other_groups():
    torch.manual_seed(1)
    dw = nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5)
    keep = torch.tensor([0, 2, 3])
    new = slice_conv(dw, keep)
    x = torch.randn(1, 5, 9, 9)
    assert new.groups == new.in_channels == new.out_channels == 3
    assert torch.allclose(new(x[:, keep]), dw(x)[:, keep], atol=1e-6)
    with pytest.raises(ConfigError, match="only depthwise"):
        slice_conv(nn.Conv2d(4, 8, 3, groups=2), keep)
    with pytest.raises(ConfigError, match="out_keep only"):
        slice_conv(dw, keep, keep)


def test_set_module_and_layer_inputs():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 2, 1)))
    set_module(net, "1.1", nn.Conv2d(4, 6, 1))
    x = torch.randn(2, 3, 5, 5)
    seen = layer_inputs(net, x, (nn.Conv2d,))
    assert set(seen) == {"0", "1.1"} and torch.equal(seen["0"], x)
    assert torch.equal(seen["1.1"], torch.relu(net[0](x)).detach())
    assert net(x).shape == (2, 6, 5, 5)
