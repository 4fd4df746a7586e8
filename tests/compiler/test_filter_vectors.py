"""Filter-vectorised tiles (one vector of a block's 8 filters per output position; on AVX-512 two
positions a vector where rows hold whole pairs) for output planes of a few positions: chosen by
the plane size, and equal to PyTorch's dense conv on 2-D and 3-D layers, strided, dilated, with
depth padding skipped, dead filters, a ReLU and a residual."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import SparseConv, plan_conv
from edgeguard.compiler.cpu.tuning import FV_MAX_POSITIONS, filter_vectors
from edgeguard.compiler.layout import InputLayout
from edgeguard.sparsity import get_scheme

from .test_kernels import needs_cxx


def test_filter_vectors_for_small_planes_and_8_filter_blocks_only():
    assert filter_vectors(16, 8, (1, 4, 4), False)
    assert filter_vectors(8, 8, (3, 2, 2), False)
    assert not filter_vectors(16, 8, (1, 8, 8), False)  # 64 positions fill position vectors
    assert not filter_vectors(16, 4, (1, 4, 4), False)  # a 4-filter block is half a vector
    assert not filter_vectors(16, 8, (1, 4, 4), True)  # a fused pool or packed rows
    assert FV_MAX_POSITIONS >= 16


def masked(conv: nn.Module, dead: int = 0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
        conv.bias.uniform_(-0.5, 0.5)
        conv.weight[:dead] = 0
    return conv.eval()


@needs_cxx
@pytest.mark.parametrize(
    "k, s, p, d, size",
    [(3, 1, 1, 1, 4), (3, 2, 1, 1, 8), (3, 1, 1, 1, 2), (3, 1, 2, 2, 3), (1, 1, 0, 1, 3)],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_filter_vectorised_2d_kernel_matches_dense(k, s, p, d, size, batch):
    conv = masked(nn.Conv2d(16, 40, k, s, p, d), dead=9)  # 40 filters: a partial last block
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    x = torch.randn(batch, 16, size, size)
    src, _ = sc.source(x.unsqueeze(2), 16)
    assert "constexpr bool" in src and "FV = true" in src
    # AVX-512: two positions a vector where every row holds whole pairs (even output widths)
    wo = conv(x[:1]).shape[-1]
    assert ("fv_pair_tile<" in src) == (wo % 2 == 0) and ("fv_tile<" in src) == (wo % 2 == 1)
    with torch.no_grad():
        want = F.relu(conv(x))
        got = sc(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_filter_vectorised_3d_kernel_skips_depth_padding_exactly():
    conv = masked(nn.Conv3d(8, 16, 3, 1, 1))
    sc = SparseConv(plan_conv(conv, mr=8), mode="cpu")
    x = torch.randn(2, 8, 3, 3, 3)  # 9 positions per plane, the first and last read padding
    lay = InputLayout(sc.plan.geometry, (3, 3, 3))
    assert filter_vectors(16, 8, lay.out, False)
    with torch.no_grad():
        want, got = conv(x), sc(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
