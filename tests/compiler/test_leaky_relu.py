"""A leaky ReLU after a sparse conv is applied by the CPU kernel (every store path: whole tiles,
last tiles, filter-vectorised tiles, batch-last transposes, dead filters) and equals PyTorch's."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import compile_model

from .helpers import mask_convs

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return F.leaky_relu(self.b(self.act(self.a(x))), 0.1)


@needs_cxx
@pytest.mark.parametrize("shape", [(1, 3, 13, 17), (8, 3, 4, 4), (1, 3, 3, 3)])
def test_leaky_relu_fused_into_the_kernel_equals_pytorch(shape):
    torch.manual_seed(9)
    model = mask_convs(Leaky().eval(), "kgs", 0.5)
    with torch.no_grad():
        model.b.weight[:8] = 0  # dead filters: their bias through the leaky ReLU
        model.b.bias[:8] = torch.linspace(-1, 1, 8)
    compiled = compile_model(model, "cpu", max_density=1.0)
    details = {d.name: d.detail for d in compiled.decisions}
    assert "leaky ReLU (0.2) fused" in details["a"] and "leaky ReLU (0.1) fused" in details["b"]
    code = compiled.module.code
    assert "leaky_relu" not in code and "self.act" not in code
    x = torch.randn(*shape)
    with torch.no_grad():
        want = model(x)
    got = compiled(x)
    assert (want < 0).any()  # negative outputs: the slope matters
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_torch_backend_keeps_the_leaky_relu_as_it_is():
    torch.manual_seed(10)
    model = mask_convs(Leaky().eval(), "kgs", 0.5)
    compiled = compile_model(model, "torch", max_density=1.0)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-5)
