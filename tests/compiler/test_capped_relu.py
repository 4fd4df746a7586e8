"""A ReLU capped at c (ReLU6, hardtanh(0, c), clamp(0, c): MobileNetV2's activation) after a sparse
conv, a depthwise conv or a fused 1x1 + depthwise pair is applied by the CPU kernel, on every
store path, and equals PyTorch's; the forward stays one run of kernels."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.passes.relu_fusion import capped_relu
from edgeguard.sparsity import get_scheme

from .helpers import mask_convs

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Capped(nn.Module):
    """Sparse convs with ReLU6 / hardtanh / clamp after them; large weights, so outputs pass the
    cap."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU6()
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = F.hardtanh(self.b(self.act(self.a(x))), 0.0, 2.5)
        return torch.clamp(self.c(y), 0, 4)


@needs_cxx
@pytest.mark.parametrize("shape", [(1, 3, 13, 17), (8, 3, 4, 4), (1, 3, 3, 3), (2, 3, 32, 32)])
def test_capped_relus_fused_into_the_sparse_kernels_equal_pytorch(shape):
    torch.manual_seed(11)
    model = mask_convs(Capped().eval(), "kgs", 0.5)
    with torch.no_grad():
        for conv in (model.a, model.b, model.c):
            conv.weight *= 3.0
        model.b.weight[:8] = 0  # dead filters: their bias through the capped ReLU
        model.b.bias[:8] = torch.linspace(-1, 4, 8)
    compiled = compile_model(model, "cpu", max_density=1.0)
    details = {d.name: d.detail for d in compiled.decisions}
    assert "ReLU capped at 6 fused" in details["a"]
    assert "ReLU capped at 2.5 fused" in details["b"]
    assert "ReLU capped at 4 fused" in details["c"]
    code = compiled.module.code
    assert "hardtanh" not in code and "clamp" not in code and "self.act" not in code
    x = torch.randn(*shape)
    with torch.no_grad():
        want = model(x)
        for _ in range(3):  # Python path, recorded, replayed
            got = compiled(x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (want == 4).any() and (want == 0).any()  # the cap and the floor both matter


class Mobile(nn.Module):
    """A MobileNetV2 block: 1x1 expand, ReLU6, depthwise, ReLU6, 1x1 project; then a stride-2
    depthwise conv on its own with a ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 8, 1)
        self.dw2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)

    def forward(self, x):
        y = F.relu6(self.dw(F.relu6(self.expand(x))))
        return F.relu6(self.dw2(self.project(y) + x))


@needs_cxx
def test_capped_relus_in_a_mobilenet_block_are_fused_into_its_kernels():
    torch.manual_seed(12)
    model = mask_convs(Mobile().eval(), "kgs", 0.5)
    with torch.no_grad():
        for conv in (model.expand, model.dw, model.dw2):
            conv.weight *= 4.0
    compiled = compile_model(model, "cpu", max_density=1.0)
    assert "relu6" not in compiled.module.code
    details = {d.name: d.detail for d in compiled.decisions}
    assert "ReLU capped at 6, expanded tensor" in details["expand"]
    assert "ReLU capped at 6 fused" in details["dw"] and "ReLU capped at 6 fused" in details["dw2"]
    x = torch.randn(2, 8, 12, 12) * 3
    with torch.no_grad():
        want = model(x)
        for _ in range(3):
            torch.testing.assert_close(compiled(x), want, rtol=1e-4, atol=1e-4)
    assert (want == 6).any()


def test_which_activations_count_as_capped_relus():
    class Acts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r6 = nn.ReLU6()
            self.ht = nn.Hardtanh(0.0, 3.0)
            self.neg = nn.Hardtanh(-1.0, 1.0)

        def forward(self, x):
            return [
                self.r6(x),
                self.ht(x),
                self.neg(x),  # not from 0
                F.relu6(x),
                F.hardtanh(x, 0.0, 2.0),
                torch.clamp(x, 0, 5),
                x.clamp(min=0.0, max=1.5),
                x.clamp(min=0.0),  # no cap: not this
                torch.clamp(x, -1, 1),
            ]

    gm = torch.fx.symbolic_trace(Acts())
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    assert [capped_relu(gm, n) for n in nodes] == [6.0, 3.0, None, 6.0, 2.0, 5.0, 1.5, None, None]


def test_the_torch_backend_keeps_the_capped_relus_as_they_are():
    torch.manual_seed(13)
    model = mask_convs(Capped().eval(), "kgs", 0.5)
    compiled = compile_model(model, "torch", max_density=1.0)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@needs_cxx
def test_a_dense_conv_before_a_relu6_is_lowered_so_the_forward_is_one_call():
    torch.manual_seed(14)
    model = Capped().eval()
    with torch.no_grad():  # a too dense to pay off alone; b and c pruned
        for conv in (model.b, model.c):
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
    shape = (1, 3, 12, 12)
    comp = compile_model(model, "cpu", input_shape=shape)
    (a,) = [d for d in comp.decisions if d.name == "a"]
    assert "lowered though dense" in a.detail and "ReLU capped at 6 fused" in a.detail
    x = torch.randn(shape)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(comp(x), model(x), rtol=1e-4, atol=1e-5)
    assert comp._replayer.chains


def test_a_cap_that_is_not_positive_or_beside_a_slope_is_refused():
    from edgeguard.compiler import CompileError, SparseConv
    from edgeguard.compiler.depthwise import DepthwiseConvCpu
    from edgeguard.compiler.plan import plan_conv

    plan = plan_conv(nn.Conv2d(4, 8, 3, padding=1), mr=8)
    with pytest.raises(CompileError, match="cap must be > 0"):
        SparseConv(plan, relu=True, cap=0.0)
    with pytest.raises(CompileError, match="only on a plain ReLU"):
        SparseConv(plan, relu=True, slope=0.1, cap=6.0)
    with pytest.raises(CompileError, match="cap must be > 0"):
        DepthwiseConvCpu(nn.Conv2d(4, 4, 3, padding=1, groups=4), relu=True, cap=-1.0)
