"""The hard-swish pass: MobileNetV3's ``(c * x) * relu6(x + 3)`` as TF graphs spell it becomes one
``hardswish`` and an in-place scale, equal to the elementwise chain; a chain whose intermediates
are used elsewhere is left as it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.passes import fuse_hard_swish
from edgeguard.compiler.passes.hard_swish import hard_swish_scaled

C = 0.1666259765625  # 1/6 in float16, as the CenterNet graph stores it


class TFStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a = F.relu6(y + 3.0)
        b = C * y
        z = b * a  # hard-swish
        w = F.relu6(3.0 + z) * (z * C)  # operands the other way round
        return self.head(w)


class Shared(nn.Module):
    def forward(self, x):
        a = F.relu6(x + 3.0)
        return (C * x) * a + a  # relu6(x + 3) is used twice: not a hard-swish alone


def test_hard_swish_chains_fuse_and_equal_the_elementwise_ops():
    torch.manual_seed(0)
    model = TFStyle().eval()
    x = torch.randn(2, 3, 9, 9) * 4  # both sides of the -3 / +3 kinks
    gm = fx.symbolic_trace(model)
    assert fuse_hard_swish(gm) == 2
    calls = [n for n in gm.graph.nodes if n.target is hard_swish_scaled]
    assert len(calls) == 2 and all(n.args[1] == C for n in calls)
    assert not [n for n in gm.graph.nodes if n.target is F.relu6]
    want = model(x)
    assert torch.allclose(gm(x), want, rtol=1e-6, atol=1e-6)
    compiled = compile_model(model, "torch", max_density=1.0)
    assert torch.allclose(compiled(x), want, rtol=1e-5, atol=1e-6)
    # by hand: hardswish(t) = t * relu6(t + 3) / 6
    t = torch.tensor([-4.0, -3.0, -1.0, 0.0, 2.0, 3.0, 5.0])
    assert torch.allclose(hard_swish_scaled(t, C), C * t * (t + 3).clamp(0, 6))


def test_a_chain_with_a_shared_intermediate_is_left_alone():
    gm = fx.symbolic_trace(Shared())
    assert fuse_hard_swish(gm) == 0
    x = torch.randn(5, 7) * 4
    assert torch.equal(gm(x), Shared()(x))
