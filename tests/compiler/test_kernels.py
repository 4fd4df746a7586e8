"""Plans and the generated CPU kernel against PyTorch's dense convolution."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeguard.compiler import SparseConv, make_plan, plan_conv
from edgeguard.compiler.cpu.target import host_vector_floats
from edgeguard.compiler.generated import BufferPool
from edgeguard.compiler.passes.lowering import choose_plan
from edgeguard.compiler.plan import ConvGeometry
from edgeguard.sparsity import get_scheme

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


def masked_conv(cin, cout, k, s, p, d, scheme="kgs", rate=0.6, seed=0, dims=3):
    torch.manual_seed(seed)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, cout, k, s, p, d)
    with torch.no_grad():
        conv.weight *= get_scheme(scheme).mask(conv.weight, rate)
        conv.bias.uniform_(-0.5, 0.5)
    return conv


def assert_relu_kernel_matches_dense(conv, x, mr=4, **knobs):
    """The CPU kernel with ReLU fused against ReLU of PyTorch's dense conv, to 1e-4 of its scale;
    ``knobs``: SparseConv's tile and schedule options."""
    y = SparseConv(plan_conv(conv, mr=mr), relu=True, mode="cpu", **knobs)(x)
    assert (y - F.relu(conv(x))).abs().max() <= 1e-4 * conv(x).abs().max()


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 13),
    c=st.integers(1, 9),
    k=st.integers(1, 3),
    mr=st.sampled_from([1, 4, 8]),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 99),
    by_pattern=st.booleans(),
)
def test_plan_stores_every_kept_weight_exactly_once(m, c, k, mr, keep, seed, by_pattern):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, c, 1, k, k, generator=g) * (torch.rand(m, c, 1, k, k, generator=g) < keep)
    geo = ConvGeometry(c, m, (1, k, k), (1, 1, 1), (0, 0, 0), (1, 1, 1))
    plan = make_plan(w, None, geo, mr, by_pattern)
    rebuilt = torch.zeros(m, c * k * k)
    slots = plan.filters.view(-1, mr)
    for rows, panel, slot in zip(plan.block_rows, plan.panels, slots, strict=True):
        assert torch.all(rows[1:] > rows[:-1])  # sorted, unique
        for j, f in enumerate(slot.tolist()):
            if f >= 0:
                rebuilt[f, rows] += panel[:, j]
            else:
                assert torch.all(panel[:, j] == 0)
    assert torch.equal(rebuilt, w.reshape(m, -1))
    assert set(plan.dead.tolist()) == {i for i in range(m) if not w[i].any()}
    stored = sum(p.numel() for p in plan.panels)  # incl. padding slots of a last partial block
    assert plan.density == pytest.approx(stored / w.numel())
    assert stored >= plan.kept_weights
    assert plan.kept_weights == int((w != 0).sum())


def test_blocks_cut_at_pattern_boundaries_store_groups_of_3_in_blocks_of_4():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 30, 3, padding=1)
    with torch.no_grad():
        conv.weight *= get_scheme("kgs", gm=3, gn=5).mask(conv.weight, 0.6)
    w = conv.weight.detach().unsqueeze(2)
    geo = ConvGeometry.of(conv)
    kept = int((w != 0).sum())
    mixed = make_plan(w, None, geo, 4)
    split = make_plan(w, None, geo, 4, by_pattern=True)
    for rows, slot in zip(split.block_rows, split.filters.view(-1, 4), strict=True):
        live = [f for f in slot.tolist() if f >= 0]
        patterns = {tuple(torch.nonzero(w[f].flatten()).flatten().tolist()) for f in live}
        assert len(patterns) == 1 and len(rows) == len(next(iter(patterns)))
    stored = sum(p.numel() for p in split.panels)
    assert stored == pytest.approx(kept * 4 / 3, rel=0.02)  # one empty slot per group of 3
    assert stored < sum(p.numel() for p in mixed.panels)
    assert choose_plan(w, None, geo, (8, 4)).density == pytest.approx(split.density)


def test_kgs_plan_has_no_padding_when_mr_divides_gm():
    conv = masked_conv(16, 32, 3, 1, 1, 1, "kgs", 0.7)
    plan = plan_conv(conv, mr=4)
    stored = sum(p.numel() for p in plan.panels)
    assert stored == plan.kept_weights  # each 4-filter block shares its kernel group's locations


CASES = [  # cin, cout, kernel, stride, padding, dilation, input size
    (8, 16, 3, 1, 1, 1, (4, 10, 11)),
    (8, 12, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (3, 9, 13)),  # R(2+1)D spatial, strided
    (6, 10, (3, 1, 1), (2, 1, 1), (1, 0, 0), 1, (5, 7, 7)),  # R(2+1)D temporal, strided
    (5, 7, 3, 2, 0, (1, 2, 2), (6, 12, 12)),  # dilation
    (3, 64, 3, 1, 1, 1, (2, 30, 30)),  # C3D conv1: 3 input channels
]


@pytest.mark.parametrize("mode", ["torch", pytest.param("cpu", marks=needs_cxx)])
@pytest.mark.parametrize("scheme", ["kgs", "vanilla", "filter", "channel", "column"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}")
def test_sparse_conv3d_matches_dense(case, scheme, mode):
    cin, cout, k, s, p, d, size = case
    conv = masked_conv(cin, cout, k, s, p, d, scheme)
    x = torch.randn(2, cin, *size)
    ref = conv(x)
    for relu in (False, True):
        y = SparseConv(plan_conv(conv), relu=relu, mode=mode)(x)
        expect = F.relu(ref) if relu else ref
        assert y.shape == expect.shape
        assert (y - expect).abs().max() <= 1e-4 * expect.abs().max()


@pytest.mark.parametrize("mode", ["torch", pytest.param("cpu", marks=needs_cxx)])
def test_sparse_conv2d_matches_dense(mode):
    conv = masked_conv(8, 16, 3, 2, 1, 1, "kgs", dims=2)
    x = torch.randn(3, 8, 15, 17)
    y = SparseConv(plan_conv(conv), two_d=True, mode=mode)(x)
    assert torch.allclose(y, conv(x), atol=1e-5)


@needs_cxx
@pytest.mark.parametrize("no_avx512", ["", "1"])
@pytest.mark.parametrize("mr, nv", [(4, 3), (8, 2), (8, 1)])
@pytest.mark.parametrize("pack", [True, False])
def test_cpu_kernel_vector_widths_and_tiles(monkeypatch, no_avx512, mr, nv, pack):
    # AVX-512 machines generate 16-float vectors (EDGEGUARD_NO_AVX512 forces 8); every register
    # tile must give the dense result at either width, tiles crossing row ends included.
    import platform

    from edgeguard.compiler.cpu import host_target

    monkeypatch.setenv("EDGEGUARD_NO_AVX512", no_avx512)
    target = host_target()
    if platform.machine() == "x86_64":
        from pathlib import Path

        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
        assert target.vector_floats == (16 if "avx512f" in flags and not no_avx512 else 8)
    assert target.tile == ((8, 2) if target.vector_floats >= 16 else (4, 3))
    conv = masked_conv(16, 24, 3, 1, 1, 1, "kgs", 0.7)
    x = torch.randn(2, 16, 3, 9, 21)
    assert_relu_kernel_matches_dense(conv, x, mr=mr, nv=nv, pack=pack)


@needs_cxx
@pytest.mark.parametrize("ct, fg", [(1, 1), (3, 1), (2, 3), (5, 4), (1, 99)])
def test_cpu_kernel_task_shapes_give_the_same_result(ct, fg):
    # Tiles per task and filter-block groups only change the schedule: every (ct, fg) must give
    # the dense result (fg past the block count is clamped: one block per group).
    conv = masked_conv(8, 36, 3, 1, 1, 1, "kgs", 0.6)
    x = torch.randn(2, 8, 3, 13, 15)
    assert_relu_kernel_matches_dense(conv, x, ct=ct, fg=fg)


@needs_cxx
@pytest.mark.parametrize("kc", [7, 64, None])
@pytest.mark.parametrize("pack", [True, False])
def test_cpu_kernel_row_slices_give_the_same_result(kc, pack):
    # 16 x 27 = 432 rows: slices of 7 or 64 rows make every block carry its accumulators across
    # many slices (first / middle / last), the default one slice; blocks may keep no row of a slice
    conv = masked_conv(16, 24, 3, 1, 1, 1, "kgs", 0.7)
    x = torch.randn(2, 16, 3, 9, 10)
    assert_relu_kernel_matches_dense(conv, x, kc=kc, pack=pack)


@needs_cxx
@pytest.mark.parametrize("depth, batch, fg", [(4, 1, 1), (4, 1, 2), (6, 2, 1), (5, 1, 3)])
def test_cpu_kernel_plane_groups_give_the_same_result(depth, batch, fg):
    # A chunk that covers its whole plane (ct past the tiles of a small plane) lets a task take
    # several depth planes (as many as still leave a task per thread): 2 threads here, so the
    # groups are 2, 4, 6 or 1 planes wide
    conv = masked_conv(8, 20, 3, 1, 1, 1, "kgs", 0.6)
    x = torch.randn(batch, 8, depth, 5, 6)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_relu_kernel_matches_dense(conv, x, ct=99, fg=fg)
    finally:
        torch.set_num_threads(threads)


@needs_cxx
@pytest.mark.parametrize(
    "k, s, p, d, depth",
    [(3, 1, 1, 1, 2), (3, 1, 3, 1, 3), (3, 2, 2, 2, 7), (2, 1, 1, 1, 1), (5, 1, 2, 1, 4)],
)
def test_taps_reading_depth_padding_are_skipped_exactly(k, s, p, d, depth):
    # Planes whose kernel depths reach into the depth padding skip those rows; padding 3 with a
    # 3-deep kernel gives planes that read padding only (their output is the bias)
    conv = masked_conv(8, 16, (k, 3, 3), (s, 1, 1), (p, 1, 1), (d, 1, 1), "kgs", 0.5)
    x = torch.randn(2, 8, depth, 6, 5)
    for ct in (None, 99):
        assert_relu_kernel_matches_dense(conv, x, mr=8, ct=ct)


@needs_cxx
@pytest.mark.parametrize("batch, ct, fg", [(1, None, None), (2, 1, 1), (3, 2, 3), (2, 99, 2)])
def test_temporal_kernels_with_planes_innermost_give_the_same_result(batch, ct, fg):
    # kd x 1 x 1 kernels order their tasks planes-first and hand each thread one run of them
    torch.manual_seed(0)
    conv = nn.Conv3d(12, 10, (3, 1, 1), padding=(1, 0, 0))
    with torch.no_grad():
        conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
    x = torch.randn(batch, 12, 5, 7, 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_relu_kernel_matches_dense(conv, x, ct=ct, fg=fg)
    finally:
        torch.set_num_threads(threads)


@needs_cxx
@pytest.mark.parametrize("k, pad", [((1, 1, 1), 0), ((3, 1, 1), (1, 0, 0))])
@pytest.mark.parametrize("width", [13, 16, 33])
def test_tiles_across_row_ends_of_unpadded_rows(k, pad, width):
    # rows without padding columns store a tile crossing a row end as one run of the output
    conv = masked_conv(16, 16, k, 1, pad, 1)
    x = torch.randn(2, 16, 3, 5, width)
    assert_relu_kernel_matches_dense(conv, x, mr=8, nv=2)
    assert_relu_kernel_matches_dense(conv, x, mr=8, nv=2, ct=1)


@needs_cxx
@pytest.mark.parametrize("no_avx512", ["", "1"])
@pytest.mark.parametrize("nv", [1, 2, 3])
@pytest.mark.parametrize(
    "height, width, stride, dilation",
    [(5, 32, 1, 1), (7, 16, 1, 1), (3, 64, 1, 2), (6, 32, 2, 1), (5, 8, 1, 1), (4, 48, 1, 1)],
)
def test_row_aligned_tiles(monkeypatch, no_avx512, nv, height, width, stride, dilation):
    # output widths that a tile divides (or that divide it in whole vectors) number the tiles in
    # the output's rows, no padding columns; odd heights end in a tile cut short; with a residual
    monkeypatch.setenv("EDGEGUARD_NO_AVX512", no_avx512)
    from edgeguard.compiler.cpu import host_target
    from edgeguard.compiler.cpu.codegen import row_aligned

    conv = masked_conv(16, 24, 3, stride, dilation, dilation, seed=width + height, dims=2)
    x = torch.randn(2, 16, height * stride, width * stride)
    r = torch.randn(2, 24, height, width)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True, nv=nv)
    vl = host_target().vector_floats
    lay = sc.kernel_layout(sc._kernel_view(tuple(x.unsqueeze(2).shape)))
    assert row_aligned(lay, nv * vl, vl, False) == (
        width % (nv * vl) == 0 or ((nv * vl) % width == 0 and width % vl == 0)
    )
    with torch.no_grad():
        want = F.relu(conv(x))
        assert (sc(x) - want).abs().max() <= 1e-4 * want.abs().max()
        sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True, nv=nv)
        sc.residual = True
        want = F.relu(conv(x) + r)
        assert (sc(x, r) - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
@pytest.mark.parametrize("width, stride", [(32, 1), (16, 1), (64, 2)])
def test_row_aligned_tiles_3d(width, stride):
    # 3 x 3 x 3 convs (C3D's conv1 at 112 wide takes them): depth padding and planes of row tiles
    conv = masked_conv(8, 16, 3, stride, 1, 1, "kgs", 0.6)
    x = torch.randn(2, 8, 5, 6, width)
    assert_relu_kernel_matches_dense(conv, x, mr=8, nv=2)


@needs_cxx
@pytest.mark.parametrize("k, width", [(1, 32), (3, 32), (3, 48)])
def test_streamed_stores_give_the_same_result(monkeypatch, k, width):
    # outputs past STREAM_MIN_BYTES are stored with streaming stores where a store is a whole
    # aligned vector (contiguous rows, row-aligned tiles, whole tiles inside a row)
    from edgeguard.compiler.cpu import codegen, host_target

    monkeypatch.setattr(codegen, "STREAM_MIN_BYTES", 0)
    conv = masked_conv(16, 24, k, 1, k // 2, 1, seed=k * width, dims=2)
    x, r = torch.randn(2, 16, 9, width), torch.randn(2, 24, 9, width)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    src, _ = sc.source(x.unsqueeze(2), host_target().vector_floats)
    assert "NT = true" in src
    sc.residual = True
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        assert (sc(x, r) - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
@pytest.mark.parametrize(
    "cin, size, wide",
    [(8, (6, 6), False), (64, (16, 16), False), (64, (32, 32), True), (16, (200, 40), True)],
)
def test_row_offsets_take_16_bits_where_they_fit(cin, size, wide):
    # the kept rows' offsets in the padded input buffer (channel * plane + row * pitch + column)
    # are 16-bit where all are < 65536 (64 channels of 18 x 17 floats), else 32-bit (64 of
    # 34 x 33: the last channel's rows start at 70686); both exact
    from edgeguard.compiler.cpu import host_target

    conv = masked_conv(cin, 16, 3, 1, 1, 1, "kgs", 0.3, seed=cin, dims=2)
    x = torch.randn(1, cin, *size)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    src, _ = sc.source(x.unsqueeze(2), host_target().vector_floats)
    assert f"typedef {'int32_t' if wide else 'uint16_t'} ridx_t;" in src
    with torch.no_grad():
        want = F.relu(conv(x))
        assert (sc(x) - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
@pytest.mark.parametrize("scheme, shared", [("column", True), ("kgs", False)])
def test_blocks_keeping_the_same_rows_share_one_offset_list(scheme, shared):
    # column pruning keeps the same rows in every filter: the 8-filter blocks' offset lists are
    # stored once (KB: every block starts at 0); KGS blocks keep different rows
    import re

    from edgeguard.compiler.cpu import host_target

    conv = masked_conv(32, 32, 3, 1, 1, 1, scheme, 0.6, seed=3, dims=2)
    x = torch.randn(1, 32, 8, 8)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    src, _ = sc.source(x.unsqueeze(2), host_target().vector_floats)
    kb = [int(v) for v in re.search(r"KB\[NB \+ 1\] = \{([^}]*)\}", src).group(1).split(",")]
    assert (kb[:-1] == [0] * (len(kb) - 1)) == shared
    with torch.no_grad():
        want = F.relu(conv(x))
        assert (sc(x) - want).abs().max() <= 1e-4 * want.abs().max()


POOL_CASES = [  # cin, cout, input (D, H, W), pool window, SparseConv knobs
    (3, 16, (5, 22, 23), (1, 2, 2), {}),  # C3D's pool1 shape; odd W: floor drops a column
    (8, 12, (6, 13, 14), (2, 2, 2), {}),  # odd H: the last row is not computed
    (16, 8, (5, 7, 9), (2, 3, 2), {"kc": 40}),  # odd D and several row slices
    (8, 20, (4, 6, 7), (2, 2, 2), {"ct": 99, "fg": 2}),  # whole planes per task, 2 filter groups
    (4, 8, (3, 30, 31), (1, 2, 2), {"pack": True}),
    (6, 10, (2, 4, 4), (2, 4, 4), {}),  # the window is the whole output
]


@pytest.mark.parametrize("mode", ["torch", pytest.param("cpu", marks=needs_cxx)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[2]}-pool{c[3]}")
def test_fused_max_pool_matches_conv_relu_pool(case, batch, mode):
    cin, cout, size, pool, knobs = case
    conv = masked_conv(cin, cout, 3, 1, 1, 1, "kgs", 0.6)
    with torch.no_grad():
        conv.weight[1] = 0  # a dead filter: its pooled output is the constant relu(bias)
    x = torch.randn(batch, cin, *size)
    sc = SparseConv(plan_conv(conv), relu=True, mode=mode, **(knobs if mode == "cpu" else {}))
    sc.pool = pool
    want = F.max_pool3d(F.relu(conv(x)), pool, pool)
    got = sc(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_fused_max_pool_outside_the_output_is_rejected():
    sc = SparseConv(plan_conv(masked_conv(4, 8, 3, 1, 1, 1)), relu=True, mode="cpu")
    sc.pool = (1, 2, 9)
    with pytest.raises(ValueError, match="within the output"):
        sc(torch.randn(1, 4, 3, 6, 6))


@pytest.mark.parametrize("knob", ["ct", "fg"])
@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_task_shape_knobs_reject_non_positive_ints(knob, bad):
    with pytest.raises(ValueError, match=f"{knob} must be a positive int"):
        SparseConv(plan_conv(masked_conv(4, 8, 3, 1, 1, 1)), mode="cpu", **{knob: bad})


def test_default_task_shape():
    from edgeguard.compiler.cpu import chunking

    assert chunking(33, 8, 64, None, None) == (4, 1)  # 264 tiles: chunks of 4, one group
    assert chunking(3, 2, 128, None, None) == (1, 1)  # 6 tiles: one per task
    assert chunking(10, 4, 128, 50, 300) == (10, 128)  # clamped to a plane and to the blocks
    # kept weights past 4 MB: long chunks (up to 16 tiles, a plane here) in two filter groups
    assert chunking(7, 4, 64, None, None, 14 << 20) == (7, 2)
    assert chunking(27, 8, 32, None, None, 5 << 20) == (16, 2)
    assert chunking(27, 8, 32, 3, 1, 5 << 20) == (3, 1)  # explicit knobs win
    # batch-last (a plane holds one image row of every sample): whole planes, two filter groups
    # past 1 MB of kept weights (ResNet-18's layer4 at batch 32: 4 tiles a plane, 3 MB)
    assert chunking(4, 4, 64, None, None, 3 << 20, batch_last=True) == (4, 2)
    assert chunking(8, 8, 32, None, None, 800 << 10, batch_last=True) == (8, 1)
    assert chunking(8, 8, 32, 2, None, 800 << 10, batch_last=True) == (2, 1)


def test_last_tile_takes_a_small_remainder_as_extra_positions():
    from edgeguard.compiler.cpu import last_tiles, tile_kind
    from edgeguard.compiler.layout import InputLayout

    # 16-float vectors, tiles of 2, at most 2 extra positions
    assert tile_kind(32, 2, 16, 2) == (2, 0)
    assert tile_kind(33, 2, 16, 2) == (2, 1)  # one past a whole tile: an extra, not a tile
    assert tile_kind(17, 2, 16, 2) == (1, 1)  # C3D's 14 x 14 planes: 209 = 6 * 32 + 17
    assert tile_kind(19, 2, 16, 2) == (2, 0)  # 3 left: a second vector
    assert tile_kind(5, 2, 16, 2) == (1, 0)  # under one vector: one vector, clipped
    assert tile_kind(17, 2, 16, 0) == (2, 0)  # no extras (AVX2, NEON, packed rows)
    conv4b = InputLayout(
        ConvGeometry(8, 8, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)), (4, 14, 14)
    )
    assert last_tiles(conv4b, 32, 7, 1, None, 2) == {17}  # one chunk a plane
    assert last_tiles(conv4b, 32, 1, 1, None, 2) == {32, 17}  # one tile a chunk
    # a fused 2 x 2 pool, chunks of 14 rows: the last row's padding column is not computed
    assert last_tiles(conv4b, 32, 7, 14, 14, 2) == {17}
    assert last_tiles(conv4b, 32, 2, 4, 14, 2) == {27, 29}  # 4 rows: 59 = 32 + 27; last: 2 rows


@needs_cxx
@pytest.mark.parametrize("width", [1, 15, 16, 17, 18, 19, 31, 33, 34, 35, 50])
@pytest.mark.parametrize("pool", [None, (1, 1, 2)])
def test_partial_last_tiles_and_extra_positions_match_dense(width, pool):
    # planes of 2 rows of `width` outputs, one chunk a plane: every remainder of a 32-position tile
    conv = masked_conv(8, 16, 3, 1, 1, 1, "kgs", 0.5)
    x = torch.randn(1, 8, 3, 2, width)
    if pool and width < 2:
        return
    m = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", nv=2, ct=99)
    m.pool = pool
    ref = F.relu(conv(x))
    ref = F.max_pool3d(ref, pool, pool) if pool else ref
    assert (m(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_tile_width_follows_the_plane():
    from edgeguard.compiler.cpu import Target

    avx512, avx2 = Target("g++", (), 16), Target("g++", (), 8)
    # C3D at 16x112x112 (rows of W + 1): conv3 planes of 27 * 29 + 28 = 811 positions take 17
    # tiles of 48 (816) rather than 26 of 32 (832); conv4's 13 * 15 + 14 = 209 take 7 tiles of
    # 32 (224) rather than 5 of 48 (240); conv5's 55 take 2 of 32
    assert avx512.nv_for(27 * 29 + 28, 8) == 3
    assert avx512.nv_for(13 * 15 + 14, 8) == 2
    assert avx512.nv_for(6 * 8 + 7, 8) == 2
    assert avx512.nv_for(111 * 113 + 112, 8) == 3  # conv1: the same 12672 positions either way
    assert avx512.nv_for(811, 16) == 2  # 16-filter blocks: 3 vectors would not fit 32 registers
    assert avx2.nv_for(811, 4) == avx2.tile[1] == 3
    # never wider than the plane: a batch-1 linear layer (one position) gets one vector
    assert avx2.nv_for(1, 8) == avx512.nv_for(1, 8) == 1
    assert avx2.nv_for(9, 4) == 2 and avx512.nv_for(17, 8) == 2


def test_two_vector_tiles_where_only_they_follow_the_rows():
    from edgeguard.compiler.cpu import Target
    from edgeguard.compiler.cpu.codegen import row_aligned
    from edgeguard.compiler.layout import InputLayout
    from edgeguard.compiler.plan import ConvGeometry

    avx512 = Target("g++", (), 16)
    g = ConvGeometry(64, 64, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1))
    for width, want in ((32, 2), (64, 2), (16, 2), (48, 3), (56, 3)):
        lay = InputLayout(g, (1, width, width))
        ra = lambda nv, lay=lay: row_aligned(lay, nv * 16, 16, False)  # noqa: E731
        # 32/64-wide rows: 3-vector tiles cover fewer padded positions (1003 against 1056 for
        # 32 x 32) but cross row ends; 2-vector ones follow the rows (ResNet-18 CIFAR's layer1).
        # 16 x 16: both follow the rows, 256 positions in 8 tiles of 32 or 6 of 48 (288)
        out = width * width
        assert avx512.nv_for(lay.positions, 8, ra, out) == want, width
        assert avx512.nv_for(lay.positions, 8) == (3 if width in (32, 16, 48, 64) else want)


@needs_cxx
def test_kernel_is_cached_and_a_corrupted_entry_is_rebuilt(tmp_path, monkeypatch):
    kernel_cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEGUARD_CACHE", str(kernel_cache))
    conv = masked_conv(4, 8, 3, 1, 1, 1)
    x = torch.randn(1, 4, 3, 6, 6)
    SparseConv(plan_conv(conv), mode="cpu")(x)
    (lib,) = list(kernel_cache.glob("*/kernel.so"))
    stamp = lib.stat().st_mtime_ns
    SparseConv(plan_conv(conv), mode="cpu")(x)  # same pattern and shape: cache hit
    assert lib.stat().st_mtime_ns == stamp
    lib.unlink()  # a new file (the loaded library stays mapped), as a crash or bit rot would leave
    lib.write_bytes(b"not a shared library")
    y = SparseConv(plan_conv(conv), mode="cpu")(x)  # checksum mismatch: rebuilt, not loaded
    assert torch.allclose(y, conv(x), atol=1e-5)
    assert lib.read_bytes()[:4] == b"\x7fELF"


def test_sparse_conv_rejects_wrong_input():
    sc = SparseConv(plan_conv(masked_conv(4, 8, 3, 1, 1, 1)), mode="torch")
    with pytest.raises(ValueError, match=r"expected input \[N, 4, D, H, W\]"):
        sc(torch.randn(1, 5, 3, 6, 6))
    with pytest.raises(ValueError, match="unknown mode"):
        SparseConv(sc.plan, mode="gpu")


@needs_cxx
def test_sparse_layers_are_named_in_profiler_traces():
    sc = SparseConv(plan_conv(masked_conv(4, 8, 3, 1, 1, 1)), mode="cpu", name="conv_x")
    x = torch.randn(1, 4, 3, 6, 6)
    sc(x)  # built outside the trace
    with torch.profiler.profile() as prof:
        sc(x)
    assert any(e.name == "sparse_conv:conv_x" for e in prof.events())


def _with_threads(threads: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@needs_cxx
@pytest.mark.parametrize("batch, threads", [(1, 2), (1, 3), (2, 4), (3, 4)])
@pytest.mark.parametrize(
    "cin, height, width, dil, stride, pool",
    [
        (8, 96, 32, 1, 1, None),
        (8, 96, 30, 1, 1, None),
        (8, 96, 32, 2, 1, None),
        (8, 768, 32, 1, 1, (1, 2, 2)),
        (16, 768, 32, 1, 1, None),
        (8, 192, 64, 1, 2, None),
        (8, 191, 61, 2, 2, None),
        (16, 1536, 64, 1, 2, None),
    ],
)
@pytest.mark.parametrize("slots", [True, False])
def test_row_fills_give_the_same_result(
    monkeypatch, batch, threads, cin, height, width, dil, stride, pool, slots
):
    # Fewer samples than threads and >= 16 tasks a thread: each thread fills the padded rows its
    # own static run of tasks reads into its own slots of the buffer; runs that start
    # mid-sample, span samples or end in the bottom padding must still find every row they read
    # filled (row-aligned, flat and pooled chunks; a pooled chunk is 16 rows here, hence the tall
    # plane), stride 1 or 2 (the rows of every phase a run reads).  The compiled model's pool
    # hands the buffer out again as it was: a call after one on NaN input must not read any row
    # the NaN call left there.  Where the threads' extra slots would pass ROW_SLOT_BYTES (here
    # made 0), the threads fill their rows into one shared buffer instead.
    from edgeguard.compiler.cpu import tuning

    if not slots:
        monkeypatch.setattr(tuning, "ROW_SLOT_BYTES", 0)
    strides = (1, stride, stride)
    conv = masked_conv(cin, 16, (1, 3, 3), strides, (0, dil, dil), (1, dil, dil), "kgs", 0.5)
    sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", ct=1)
    sc.pool = pool
    sc.scratch = BufferPool()
    x = torch.randn(batch, cin, 1, height, width)
    kernel = sc._cpu_kernel(x)
    assert kernel.schedule(batch, threads) == {"per_sample": False, "row_fills": True, "parts": 1}
    floats = _with_threads(threads, lambda: kernel.buffer_floats(batch))
    if slots:  # a slot per sample and thread, each with a gap
        assert floats / (batch + threads - 1) > sc.layout(x).batch_stride
    else:
        assert floats == batch * sc.layout(x).batch_stride
    for scale in (float("nan"), 1.0, -2.0):
        ref = F.relu(conv(x * scale))
        ref = F.max_pool3d(ref, pool) if pool else ref
        y = _with_threads(threads, lambda: sc(x * scale))  # noqa: B023 (called at once)
        if scale == scale:
            assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


@needs_cxx
@pytest.mark.parametrize("batch, threads, rows", [(1, 2, True), (2, 4, True), (1, 3, False)])
def test_row_fills_take_few_tasks_that_split_evenly(batch, threads, rows):
    # A 16 x 16 plane has 8 chunks of 32 positions: at batch 1 on 2 threads each thread takes 4
    # of them and fills their rows (the static runs are even); 8 chunks on 3 threads are not,
    # and split into filter-block parts for the dynamic schedule instead
    conv = masked_conv(16, 32, (1, 3, 3), 1, (0, 1, 1), 1, "kgs", 0.5)
    sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", ct=1, nv=2)
    sc.scratch = BufferPool()
    x = torch.randn(batch, 16, 1, 16, 16)
    sched = sc._cpu_kernel(x).schedule(batch, threads)
    assert sched["row_fills"] == rows
    assert (sched["parts"] == 1) if rows else (sched["parts"] > 1)
    for scale in (float("nan"), 1.0):
        ref = F.relu(conv(x * scale))
        y = _with_threads(threads, lambda: sc(x * scale))  # noqa: B023 (called at once)
        if scale == scale:
            assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


@needs_cxx
@pytest.mark.parametrize(
    "threads, size, fg",
    [
        (3, (8, 8), None),
        (4, (8, 8), None),
        (3, (6, 9), None),
        (3, (8, 8), 2),
        (2, (4, 5), None),
        (4, (4, 5), None),
    ],
)
def test_split_filter_blocks_give_the_same_result(threads, size, fg):
    # A batch-1 call with few tasks (a small plane's 1-3 chunks) that do not split evenly over
    # the threads splits each task's filter blocks into parts for the dynamic schedule to
    # balance; every block must still be computed once
    conv = masked_conv(16, 64, (1, 3, 3), 1, (0, 1, 1), 1, "kgs", 0.5)
    x = torch.randn(1, 16, 1, *size)
    sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", fg=fg, nv=2)
    sched = sc._cpu_kernel(x).schedule(1, threads)
    assert not sched["row_fills"] and sched["parts"] > 1
    y = _with_threads(threads, lambda: sc(x))
    ref = F.relu(conv(x))
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()
    # at a batch of a sample per thread the tasks are whole
    assert (
        sc._cpu_kernel(x.expand(threads, -1, -1, -1, -1)).schedule(threads, threads)["parts"] == 1
    )


@needs_cxx
@pytest.mark.skipif(host_vector_floats() != 16, reason="an 8 x 8 plane is 2 tiles on AVX-512")
def test_a_task_per_thread_fills_its_own_rows():
    # An 8 x 8 plane of masked columns is 2 chunks of 32 positions: at batch 1 on 2 threads
    # each thread fills the rows of its one chunk (every filter block), with no barrier and no
    # row from the other core, instead of splitting both chunks' blocks over a shared buffer
    conv = masked_conv(16, 64, (1, 3, 3), 1, (0, 1, 1), 1, "kgs", 0.5)
    x = torch.randn(1, 16, 1, 8, 8)
    sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", ct=1, nv=2)
    sched = sc._cpu_kernel(x).schedule(1, 2)
    assert sched["row_fills"] and sched["parts"] == 1
    assert not sc._cpu_kernel(x).schedule(1, 3)["row_fills"]  # 2 chunks on 3 threads: parts
    y = _with_threads(2, lambda: sc(x))
    ref = F.relu(conv(x))
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


@needs_cxx
@pytest.mark.parametrize("threads", [2, 4])
def test_split_filter_blocks_with_plane_groups_give_the_same_result(threads):
    # whole-plane chunks of a 3-D layer at batch 1: a task takes a group of depth planes, and the
    # few such tasks are split by filter blocks on top
    conv = masked_conv(8, 64, 3, 1, 1, 1, "kgs", 0.6)
    x = torch.randn(1, 8, 4, 5, 6)
    sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode="cpu", ct=99)
    assert sc._cpu_kernel(x).schedule(1, threads)["parts"] > 1
    y = _with_threads(threads, lambda: sc(x))
    ref = F.relu(conv(x))
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


@needs_cxx
def test_row_fills_fill_every_row_when_the_team_is_smaller_than_asked(tmp_path):
    # OMP_THREAD_LIMIT=1 gives a 1-thread team to a kernel asked for 2 (as a caller's own
    # parallel region would): the rows are dealt over the team it got, so none stays unfilled
    script = tmp_path / "team.py"
    script.write_text(
        "import sys, torch, torch.nn.functional as F\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_kernels import masked_conv\n"
        "from edgeguard.compiler import SparseConv, plan_conv\n"
        "torch.set_num_threads(2)\n"
        "conv = masked_conv(8, 16, (1, 3, 3), 1, (0, 1, 1), 1, 'kgs', 0.5)\n"
        "x = torch.randn(1, 8, 1, 96, 32)\n"
        "sc = SparseConv(plan_conv(conv, mr=8), relu=True, mode='cpu', ct=1)\n"
        "assert sc._cpu_kernel(x).schedule(1, 2)['row_fills']\n"
        "ref = F.relu(conv(x))\n"
        "print(float((sc(x) - ref).abs().max() / ref.abs().max()))\n"
    )
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    res = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) <= 1e-4
