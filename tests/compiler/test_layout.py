"""The kernels' input layout against an independent reference: zero padding + strided slicing."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.compiler.layout import InputLayout
from edgeguard.compiler.plan import ConvGeometry


@settings(max_examples=60, deadline=None)
@given(
    k=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 9)),
    c=st.integers(1, 3),
    n=st.integers(1, 2),
)
def test_every_kept_row_reads_the_padded_input_at_every_output_position(k, s, p, d, size, c, n):
    geo = ConvGeometry(c, 1, k, s, p, d)
    lay = InputLayout(geo, size)
    do, ho, wo = lay.out
    if min(do, ho, wo) < 1:
        return
    x = torch.randn(n, c, *size)
    buf = lay.prepare(x, slack=64)
    _dq, hq, wq = lay.phased
    assert wq >= wo
    xp = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]))
    rows = torch.arange(c * geo.locations)
    offs = lay.row_offsets(rows)
    dd, hh, ww = torch.meshgrid(torch.arange(do), torch.arange(ho), torch.arange(wo), indexing="ij")
    pos = (dd * hq * wq + hh * wq + ww).flatten()  # p = h * Wq + w within the plane d
    for b in range(n):
        for r, off in zip(rows.tolist(), offs.tolist(), strict=True):
            ch, loc = divmod(r, geo.locations)
            kd, rem = divmod(loc, k[1] * k[2])
            kh, kw = divmod(rem, k[2])
            ref = xp[b, ch, kd * d[0] :: s[0], kh * d[1] :: s[1], kw * d[2] :: s[2]]
            ref = ref[:do, :ho, :wo].flatten()
            got = buf[b * lay.batch_stride + off + pos]
            assert torch.equal(got, ref), (r, lay.shares_columns)


def test_stride_one_rows_share_their_zero_columns():
    # C3D conv3: rows of 28 + 1 floats (not 28 + 2), so a 28-wide plane is 811 positions, 26 tiles
    lay = InputLayout(ConvGeometry(4, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)), (8, 28, 28))
    assert lay.shares_columns and lay.phased == (10, 30, 29) and lay.positions == 27 * 29 + 28
    strided = InputLayout(ConvGeometry(4, 4, (1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1)), (4, 9, 9))
    assert not strided.shares_columns
    over = InputLayout(ConvGeometry(4, 4, (1, 1, 1), (1, 1, 1), (0, 0, 1), (1, 1, 1)), (4, 9, 9))
    assert not over.shares_columns  # padding wider than the kernel reach: no sharing possible


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p=st.integers(0, 4),
    d=st.integers(1, 3),
    depth=st.integers(1, 7),
)
def test_depth_taps_are_exactly_the_taps_that_read_real_input(k, s, p, d, depth):
    lay = InputLayout(ConvGeometry(1, 1, (k, 1, 1), (s, 1, 1), (p, 0, 0), (d, 1, 1)), (depth, 2, 2))
    if lay.out[0] < 1:
        return
    # the padded input's depth planes, marked real (1) or padding (0)
    real = F.pad(torch.ones(depth), (p, p))
    taps = lay.depth_taps()
    assert len(taps) == lay.out[0]
    for plane, (lo, hi) in enumerate(taps):
        reads = [bool(real[plane * s + kd * d]) for kd in range(k)]
        assert reads == [lo <= kd < hi for kd in range(k)], (plane, reads, (lo, hi))


def test_depth_taps_of_c3d_conv4b():
    # 4 planes, kernel 3, padding 1: the first plane's kd = 0 and the last's kd = 2 read padding
    lay = InputLayout(ConvGeometry(4, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)), (4, 14, 14))
    assert lay.depth_taps() == [(1, 3), (0, 3), (0, 3), (0, 2)]


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 5),
    p=st.integers(1, 3),
    d=st.integers(1, 2),
    size=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 6)),
    c=st.integers(1, 3),
    n=st.integers(1, 2),
)
def test_virtual_depth_rows_read_the_raw_input_where_the_taps_are_real(k, p, d, size, c, n):
    # a temporal conv padded along depth only reads its raw input in place: the rows of plane
    # `plane` in depth_taps' range read what the zero-padded input holds there
    geo = ConvGeometry(c, 1, (k, 1, 1), (1, 1, 1), (p, 0, 0), (d, 1, 1))
    assert InputLayout.virtual_depth_fits(geo, size)
    lay = InputLayout(geo, size, virtual_depth=True)
    if lay.out[0] < 1:
        return
    assert lay.stored_padding == (0, 0, 0) and lay.batch_stride == c * size[0] * size[1] * size[2]
    x = torch.randn(n, c, *size)
    flat = x.flatten()
    xp = F.pad(x, (0, 0, 0, 0, p, p))
    hw = size[1] * size[2]
    rows = torch.arange(c * k)
    offs = lay.row_offsets(rows)
    for b in range(n):
        for plane, (lo, hi) in enumerate(lay.depth_taps()):
            for r, off in zip(rows.tolist(), offs.tolist(), strict=True):
                ch, kd = divmod(r, k)
                if not lo <= kd < hi:
                    continue
                start = b * lay.batch_stride + plane * hw + off
                assert start >= 0 and start + hw <= flat.numel()
                assert torch.equal(flat[start : start + hw], xp[b, ch, plane + kd * d].flatten())


def test_virtual_depth_only_for_stride_one_depth_padded_convs():
    fits = InputLayout.virtual_depth_fits
    assert fits(ConvGeometry(4, 4, (3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1)), (8, 7, 7))
    assert not fits(ConvGeometry(4, 4, (3, 1, 1), (2, 1, 1), (1, 0, 0), (1, 1, 1)), (8, 7, 7))
    assert not fits(ConvGeometry(4, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)), (8, 7, 7))
    assert not fits(ConvGeometry(4, 4, (3, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)), (8, 7, 7))
    assert not fits(ConvGeometry(2**20, 4, (3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1)), (64, 8, 8))
