"""Dependency-aware channel pruning (``edgeguard.sparsity.channel_graph``): on a MobileNetV3-like
graph with depthwise convs, squeeze-excite, hard-swish, residual adds, concatenation, resizing, a
channel shuffle and a sigmoid, the physically shrunk model equals the masked one, the coupled
channels go together, and what cannot shrink is kept and said."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.models import count_flops
from edgeguard.sparsity import SparsityError
from edgeguard.sparsity.channel_graph import ChannelGraph, prune_channels

SHAPE = (2, 3, 24, 24)


class Block(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> squeeze-excite -> project 1x1, plus a residual."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1)
        self.dw = nn.Conv2d(e, e, 3, padding=1, groups=e)
        self.se1 = nn.Conv2d(e, 8, 1)
        self.se2 = nn.Conv2d(8, e, 1)
        self.project = nn.Conv2d(e, c, 1)

    def forward(self, x):
        y = F.hardswish(self.expand(x))
        y = F.relu(self.dw(F.pad(y, (0, 0, 0, 0))))
        s = F.relu6(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))) + 3.0) * (1 / 6)
        return x + self.project(y * s)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.bn = nn.BatchNorm2d(16)
        self.b1 = Block(16, 48)
        self.b2 = Block(16, 32)
        self.side = nn.Conv2d(16, 12, 3, padding=1)
        self.mix = nn.Conv2d(28, 24, 1)
        self.gate = nn.Conv2d(24, 8, 1)  # read by a sigmoid: masked channels would be 0.5
        self.shuffled = nn.Conv2d(24, 8, 1)  # read by a channel shuffle: kept whole
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        y = self.b2(self.b1(F.relu(self.bn(self.stem(x)))))
        z = torch.cat([y, F.relu(self.side(y))], 1)
        z = F.interpolate(F.relu(self.mix(z)), scale_factor=2.0, mode="nearest")
        g = torch.sigmoid(self.gate(z))
        sh = self.shuffled(z)
        n, c, h, w = sh.shape
        sh = sh.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(torch.cat([g, sh], 1))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # varied filter norms and BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1) * 2)
                m.bias.uniform_(-0.5, 0.5)
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_coupled_channels_are_one_group_and_unknown_ops_freeze_theirs():
    g = ChannelGraph(_net(), SHAPE)
    # the stem's 16 channels run through both residual blocks: each group holds the stem's filter,
    # both projects' filters, the BatchNorm channel and every conv reading the residual stream
    stream = [gr for gr in g.groups if ("stem", 0) in gr.producers]
    assert len(stream) == 1
    (s0,) = stream
    assert {n for n, _ in s0.producers} == {"stem", "b1.project", "b2.project"}
    assert ("bn", 0) in s0.norms
    assert {n for n, _ in s0.consumers} >= {"b1.expand", "b2.expand", "side", "mix"}
    # an expanded channel: expand filter, depthwise channel, SE input and output, project input
    (e0,) = [gr for gr in g.groups if ("b1.expand", 0) in gr.producers]
    assert ("b1.dw", 0) in e0.depthwise and ("b1.se2", 0) in e0.producers
    assert {n for n, _ in e0.consumers} == {"b1.se1", "b1.project"}
    assert "shuffle" not in g.frozen and "shuffled" in g.frozen  # read by reshape: kept whole
    assert "head" in g.frozen  # read by the graph's output


@pytest.mark.parametrize("target", [1.3, 2.0])
def test_the_shrunk_model_equals_the_masked_one_and_reaches_the_target(target):
    net = _net()
    x = torch.randn(SHAPE)
    res = prune_channels(net, SHAPE, target, ignored=["stem"])
    assert res.reduction >= target
    assert (
        count_flops(res.model, SHAPE).dense_macs
        < count_flops(net, SHAPE).dense_macs / target * 1.0001
    )
    with torch.no_grad():
        want, got = res.masked(x), res.model(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())
    assert res.model.stem.out_channels == 16  # ignored: its filters stay
    assert res.model.shuffled.out_channels == 8 and res.model.head.out_channels == 5
    # the sigmoid's input channels would be 0.5 once masked: they are never removed
    assert res.model.gate.out_channels == 8
    assert res.model.b1.dw.groups == res.model.b1.dw.out_channels < 48  # depthwise shrunk too
    assert res.model.b1.se2.out_channels == res.model.b1.dw.out_channels
    assert res.model.b1.dw.out_channels % 8 == 0  # 48 channels: a multiple of round_to kept
    assert net.b1.expand.out_channels == 48  # the given model is not modified
    text = res.summary()
    assert "kept whole: read by call_method reshape" in text and "stem" in text


def test_an_unreachable_target_is_refused():
    with pytest.raises(SparsityError, match="out of reach"):
        prune_channels(_net(), SHAPE, 1000.0)
    with pytest.raises(SparsityError, match=">= 1"):
        prune_channels(_net(), SHAPE, 0.5)
    with pytest.raises(SparsityError, match="ignored names no conv of the model: nope"):
        prune_channels(_net(), SHAPE, 1.5, ignored=["nope"])
    with pytest.raises(SparsityError, match="round_to"):
        prune_channels(_net(), SHAPE, 1.5, round_to=0)


class Plain(nn.Module):
    """BatchNorm without affine parameters, a per-channel constant added by ``Tensor.add`` and a
    spatial mean by ``Tensor.mean`` with an int-free dims tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32, affine=False)
        self.register_buffer("offset", torch.linspace(-1, 1, 32).view(1, 32, 1, 1))
        self.b = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x)).add(self.offset))
        return self.b(y * y.mean((-1, -2), keepdim=True))


def test_affine_free_batchnorm_and_added_constants_shrink_exactly():
    torch.manual_seed(3)
    net = Plain().eval()
    with torch.no_grad():
        net.a.weight.mul_(torch.rand(32, 1, 1, 1) * 2)
        net.bn.running_mean.uniform_(-0.5, 0.5)
    res = prune_channels(net, (2, 3, 12, 12), 1.5, round_to=1)
    assert res.model.a.out_channels < 32 and res.model.bn.num_features == res.model.a.out_channels
    assert res.model.offset.shape[1] == res.model.a.out_channels
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(res.model(x), res.masked(x), rtol=1e-5, atol=1e-5)
