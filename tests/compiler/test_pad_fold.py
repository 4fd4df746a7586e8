"""Constant pads before a conv (zeros) or a max pool (-inf) become the layer's own padding when
every spatial axis is padded evenly; anything else stays an ``F.pad``.  Compiled models still
compute the masked model's outputs."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.passes.pad_fold import fold_pads

from .helpers import mask_convs

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)  # VALID after an explicit even pad: folded
        self.pool = nn.MaxPool2d(3, 2)  # -inf pad: folded
        self.b = nn.Conv2d(16, 16, 3, padding=1)  # uneven pad (TF SAME's odd pixel): kept
        self.c = nn.Conv2d(16, 8, 3)  # a pad of ones: kept
        self.d = nn.Conv2d(8, 8, 3)  # called twice, once after a pad: kept

    def forward(self, x):
        y = F.relu(self.a(F.pad(x, (1, 1, 2, 2, 0, 0, 0, 0))))
        y = self.pool(F.pad(y, (1, 1, 1, 1), value=-math.inf))
        y = F.relu(self.b(F.pad(y, (0, 1, 0, 1))))
        y = F.relu(self.c(F.pad(y, (1, 1, 1, 1), value=1.0)))
        return self.d(F.pad(y, (1, 1, 1, 1))) + self.d(y).mean()


def test_even_pads_fold_into_the_layer_and_the_rest_stay():
    torch.manual_seed(0)
    model = Padded().eval()
    x = torch.randn(2, 3, 17, 19)
    gm = fx.symbolic_trace(copy.deepcopy(model))  # the trace shares modules: a copy
    with torch.no_grad():
        want = model(x)
    assert fold_pads(gm) == 2
    assert gm.a.padding == (2, 1) and gm.pool.padding == (1, 1)
    assert gm.b.padding == (1, 1) and gm.c.padding == (0, 0) and gm.d.padding == (0, 0)
    pads = [n for n in gm.graph.nodes if n.target is F.pad]
    assert len(pads) == 3
    with torch.no_grad():
        assert torch.allclose(gm(x), want, atol=1e-5)


def test_a_pool_pad_past_half_the_window_stays():
    m = nn.Sequential(nn.MaxPool2d(2))

    class P(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(F.pad(x, (2, 2, 2, 2), value=-math.inf))

    gm = fx.symbolic_trace(P())
    assert fold_pads(gm) == 0


@needs_cxx
def test_compiled_model_with_folded_pads_equals_the_masked_model():
    torch.manual_seed(1)
    model = Padded().eval()
    mask_convs(model, "kgs")
    x = torch.randn(2, 3, 17, 19)
    with torch.no_grad():
        want = model(x)
    compiled = compile_model(model, "cpu", max_density=1.0)
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-4)
    assert model.a.padding == (0, 0)  # the user's model is left as it was
    assert sum(1 for n in compiled.module.graph.nodes if n.target is F.pad) <= 3
