"""Masked columns: narrow planes (rows narrower than an AVX-512 vector) stored without width
padding, each kept row read with its kernel column's lane mask.  Checked against zero padding
and slicing (what every lane reads) and against PyTorch's dense conv (the kernel; the
residual also on the filter-vectorised path that takes the 4 x 4 planes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeguard.compiler import SparseConv, plan_conv
from edgeguard.compiler.cpu.target import host_vector_floats
from edgeguard.compiler.layout import InputLayout
from edgeguard.compiler.plan import ConvGeometry

from .test_filter_vectors import masked
from .test_kernels import needs_cxx

needs_avx512 = pytest.mark.skipif(
    host_vector_floats() != 16, reason="masked columns are an AVX-512 kernel path"
)


def geo(k=(1, 3, 3), p=(0, 1, 1), d=(1, 1, 1), s=(1, 1, 1), c=4) -> ConvGeometry:
    return ConvGeometry(c, 8, k, s, p, d)


def test_masked_columns_fit_rows_narrower_than_a_vector_that_keep_their_width():
    assert InputLayout.masked_columns_fit(geo(), (1, 8, 8), 16)
    assert InputLayout.masked_columns_fit(geo(k=(1, 5, 5), p=(0, 2, 2)), (1, 8, 8), 16)
    assert InputLayout.masked_columns_fit(geo(p=(0, 2, 2), d=(1, 2, 2)), (1, 4, 4), 16)
    assert InputLayout.masked_columns_fit(geo(k=(1, 1, 3), p=(0, 0, 1)), (1, 8, 2), 16)
    assert not InputLayout.masked_columns_fit(geo(), (1, 8, 8), 8)  # no AVX-512
    assert not InputLayout.masked_columns_fit(geo(), (1, 16, 16), 16)  # a vector a row already
    assert not InputLayout.masked_columns_fit(geo(), (1, 6, 6), 16)  # 16 % 6: rows split
    assert not InputLayout.masked_columns_fit(geo(), (1, 3, 8), 16)  # 24 positions: 1.5 vectors
    assert not InputLayout.masked_columns_fit(geo(s=(1, 2, 2)), (1, 8, 8), 16)
    assert not InputLayout.masked_columns_fit(geo(p=(0, 1, 0)), (1, 8, 8), 16)  # no W padding
    assert not InputLayout.masked_columns_fit(geo(k=(1, 5, 5)), (1, 8, 8), 16)  # narrows
    lay = InputLayout(geo(), (1, 8, 8), masked_columns=True)
    assert lay.phased == (1, 10, 8) and lay.positions == 64 and lay.head == 8
    assert lay.stored_padding == (0, 1, 0) and lay.column_shift == 1 and not lay.shares_columns
    with pytest.raises(ValueError, match="masked columns"):
        InputLayout(geo(s=(1, 2, 2)), (1, 8, 8), masked_columns=True)


def test_column_masks_of_a_3x3_kernel_on_8_wide_rows_by_hand():
    lay = InputLayout(geo(c=1), (1, 8, 8), masked_columns=True)
    # kw = 0 reads column w - 1 (none for w = 0), kw = 1 column w, kw = 2 column w + 1 (none for 7)
    masks = lay.column_masks(torch.arange(9), 16).tolist()
    assert masks[:3] == [0xFEFE, 0xFFFF, 0x7F7F] and masks[3:6] == masks[:3] == masks[6:]


@settings(max_examples=60, deadline=None)
@given(
    kh=st.integers(1, 3),
    kw=st.sampled_from([3, 5]),
    d=st.integers(1, 2),
    w=st.sampled_from([1, 2, 4, 8]),
    rows=st.integers(1, 3),
    c=st.integers(1, 3),
    n=st.integers(1, 2),
)
def test_every_masked_lane_reads_zero_padding_and_every_other_the_padded_input(
    kh, kw, d, w, rows, c, n
):
    pw = d * (kw - 1) // 2
    ph = d * (kh - 1) // 2
    h = rows * 16 // w  # a whole number of vectors
    g = ConvGeometry(c, 1, (1, kh, kw), (1, 1, 1), (0, ph, pw), (1, d, d))
    if not InputLayout.masked_columns_fit(g, (1, h, w), 16):
        return  # (a 1-wide row has no column a 3-wide kernel keeps the width of at pw > 0)
    lay = InputLayout(g, (1, h, w), masked_columns=True)
    x = torch.randn(n, c, 1, h, w)
    slack = 64
    buf = torch.cat([torch.full((slack,), float("nan")), lay.prepare(x, slack)])  # NaN before
    xp = F.pad(x, (pw, pw, ph, ph))
    ids = torch.arange(c * g.locations)
    offs, masks = lay.row_offsets(ids), lay.column_masks(ids, 16)
    pos = torch.arange(h * w)  # p = h * W + w: no padding column
    for b in range(n):
        for r, off, m in zip(ids.tolist(), offs.tolist(), masks.tolist(), strict=True):
            ch, loc = divmod(r, g.locations)
            i, j = divmod(loc, kw)
            ref = xp[b, ch, 0, i * d : i * d + h, j * d : j * d + w].flatten()
            at = slack + b * lay.batch_stride + off - lay.column_shift + pos
            lane_on = (m >> (pos % 16)) & 1 == 1
            got = torch.where(lane_on, buf[at], torch.zeros(()))  # a masked load
            assert torch.equal(got, ref), (r, m)


@needs_cxx
@needs_avx512
@pytest.mark.parametrize(
    "k, p, d, hw",
    [
        (3, 1, 1, (8, 8)),
        (5, 2, 1, (8, 8)),
        (3, 2, 2, (8, 8)),
        ((1, 3), (0, 1), 1, (8, 8)),  # no height padding: the input is read where it lies
        (3, 1, 1, (8, 4)),  # 32 positions, 4 rows a vector (not filter-vectorised)
        (3, 1, 1, (16, 2)),
        (3, 1, 1, (24, 8)),  # 3 tiles' worth of vectors a plane
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_masked_column_kernel_matches_dense(k, p, d, hw, batch):
    conv = masked(nn.Conv2d(16, 40, k, 1, p, d), dead=9)  # 40 filters: a partial last block
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    x = torch.randn(batch, 16, *hw)
    src, _ = sc.source(x.unsqueeze(2), 16)
    assert "MC = true" in src and "NXM = 0" in src
    with torch.no_grad():
        want = F.relu(conv(x))
        got = sc(x)
        again = sc(x.clone())  # the kept buffers (their stale floats are never read)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert torch.equal(got, again)


@needs_cxx
@pytest.mark.parametrize(
    "hw, path",
    [
        ((4, 4), "FV = true"),  # filter-vectorised tiles
        pytest.param((8, 8), "MC = true", marks=needs_avx512),  # masked columns
    ],
)
def test_narrow_plane_kernels_add_a_residual_before_the_relu(hw, path):
    conv = masked(nn.Conv2d(16, 24, 3, 1, 1), dead=3)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    sc.residual = True
    x, r = torch.randn(2, 16, *hw), torch.randn(2, 24, *hw)
    assert path in sc.source(x.unsqueeze(2), host_vector_floats())[0]
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        got = sc(x, r)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
