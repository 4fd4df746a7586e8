"""The generated depthwise kernel (MobileNet-style graphs) against PyTorch's grouped conv, and its
lowering: the zero ``F.pad`` before it and the ReLU after it are taken into the kernel."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import CompileError, compile_model
from edgeguard.compiler.depthwise import DepthwiseConvCpu

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


@needs_cxx
@pytest.mark.parametrize(
    ("k", "stride", "pads", "mult", "size"),
    [
        (3, 1, (1, 1, 1, 1), 1, (9, 70)),  # a row of 4 full vectors and a tail of 6
        (3, 2, (0, 1, 0, 1), 1, (16, 33)),  # TF SAME at stride 2: the odd pixel after
        (5, 1, (2, 2, 2, 2), 2, (6, 5)),  # channel multiplier 2, a plane narrower than a vector
        (5, 2, (1, 2, 2, 1), 1, (17, 40)),
        (3, 1, (0, 0, 0, 0), 1, (3, 3)),  # one output
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_depthwise_kernel_equals_grouped_conv(k, stride, pads, mult, size, relu):
    torch.manual_seed(k * 7 + stride)
    conv = nn.Conv2d(6, 6 * mult, k, stride, groups=6)
    x = torch.randn(2, 6, *size)
    want = conv(F.pad(x, pads))
    want = F.relu(want) if relu else want
    got = DepthwiseConvCpu(conv, pads=pads, relu=relu)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


class Block(nn.Module):
    """A MobileNet block as TF.js graphs hold it: a conv, TF SAME padding as an ``F.pad``, a
    stride-2 depthwise conv, ReLUs as ``F.relu``, 1x1 project (a 3x3 first conv: a 1x1 expand
    would be fused with the depthwise conv, test_pointwise_depthwise.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, 2, groups=32)
        self.project = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = F.relu(self.expand(x))
        y = F.relu(self.dw(F.pad(y, (0, 1, 0, 1))))
        return self.project(y)


@needs_cxx
def test_lowering_takes_the_pad_and_relu_into_the_depthwise_kernel():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(1, 8, 20, 20)
    want = model(x)
    compiled = compile_model(model, "cpu", max_density=1.0)
    got = compiled(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    (dec,) = [d for d in compiled.decisions if d.name == "dw"]
    assert dec.action == "depthwise" and "padding taken in" in dec.detail and "ReLU" in dec.detail
    code = compiled.module.code
    assert "pad" not in code and code.count("relu") == 0  # both ReLUs fused, the pad taken in
    assert isinstance(compiled.module.dw, DepthwiseConvCpu) and compiled.module.dw.pads == (
        0,
        1,
        0,
        1,
    )
    torch_backend = compile_model(model, "torch", max_density=1.0)  # left as PyTorch's conv
    assert isinstance(torch_backend.module.dw, nn.Conv2d)


def test_a_conv_that_is_not_depthwise_is_refused():
    with pytest.raises(CompileError, match="not a depthwise conv"):
        DepthwiseConvCpu(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(CompileError, match="not a depthwise conv"):
        DepthwiseConvCpu(nn.Conv2d(4, 4, 3, groups=4, dilation=2))
