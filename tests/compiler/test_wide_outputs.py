"""Wide kernel outputs (docs/compiler.md, "Wide outputs"): a 3-D sparse conv whose users are all
3-D sparse convs stores its output in its padded buffer's row pitch and returns a view of it; the
users read that view in place, through their fill's strides, or as a fused residual.  The
compiled model equals the masked one whatever the chain, call after call."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.cpu.codegen import wide_plane
from edgeguard.compiler.layout import InputLayout
from edgeguard.compiler.plan import ConvGeometry
from edgeguard.compiler.sparse_conv import input_pitch, wide_input

from .helpers import kept_calls, mask_convs, poison_pools

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


def _geometry(kernel, padding, stride=(1, 1, 1), cin=4, cout=8) -> ConvGeometry:
    return ConvGeometry(cin, cout, kernel, stride, padding, (1, 1, 1))


def test_wide_plane_only_for_flat_tiles_over_padded_rows():
    spatial = InputLayout(_geometry((1, 3, 3), (0, 1, 1)), (4, 13, 13))
    plane = wide_plane(spatial, 32, 16, False)
    assert plane % 16 == 0 and plane >= 13 * spatial.phased[2] >= spatial.positions
    assert wide_plane(spatial, 32, 16, True) == 0  # filter-vectorised, packed, pooled, batch-last
    unpadded = InputLayout(_geometry((3, 1, 1), (1, 0, 0)), (4, 13, 13), virtual_depth=True)
    assert wide_plane(unpadded, 32, 16, False) == 0  # no padding column to keep
    row_aligned = InputLayout(_geometry((1, 3, 3), (0, 1, 1)), (4, 32, 32))
    assert wide_plane(row_aligned, 32, 16, False) == 0  # tiles already in the output's rows


def test_a_pitched_layout_reads_rows_and_planes_at_its_pitch():
    g = _geometry((3, 1, 1), (1, 0, 0))
    lay = InputLayout(g, (4, 13, 13), virtual_depth=True, pitch=(14, 192))
    assert lay.phased[2] == 14 and lay.plane_stride == 192 and lay.positions == 12 * 14 + 13
    assert lay.batch_stride == 4 * 4 * 192
    # row c * L + kd: channel c, kernel depth kd reads plane kd - 1 of channel c
    rows = torch.tensor([0, 2, 3 + 1])
    assert lay.row_offsets(rows).tolist() == [-192, 192, 4 * 192]
    with pytest.raises(ValueError, match="pitch"):
        InputLayout(g, (4, 13, 13), virtual_depth=True, pitch=(12, 192))  # narrower than a row
    with pytest.raises(ValueError, match="pitch"):
        InputLayout(_geometry((1, 3, 3), (0, 1, 1)), (4, 13, 13), pitch=(14, 192))  # padded


class R21Block(nn.Module):
    """An R(2+1)D block: spatial (1, 3, 3), ReLU, temporal (3, 1, 1), a second pair, the residual
    (through a 1 x 1 x 1 projection where the block downsamples or widens), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, mid: int) -> None:
        super().__init__()
        s = (1, stride, stride)
        self.s1 = nn.Conv3d(cin, mid, (1, 3, 3), s, (0, 1, 1))
        self.t1 = nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0))
        self.s2 = nn.Conv3d(cout, mid, (1, 3, 3), 1, (0, 1, 1))
        self.bn = nn.BatchNorm3d(mid)
        self.t2 = nn.Conv3d(mid, cout, (3, 1, 1), 1, (1, 0, 0))
        fits = stride == 1 and cin == cout
        self.down = None if fits else nn.Conv3d(cin, cout, 1, (stride, stride, stride))

    def forward(self, x):
        y = torch.relu(self.t1(torch.relu(self.s1(x))))
        y = self.t2(torch.relu(self.bn(self.s2(y))))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class R21Net(nn.Module):
    def __init__(self, blocks: list[tuple[int, int]], mid: int, head: bool) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 8, (1, 5, 5), (1, 2, 2), (0, 2, 2))
        self.stem_t = nn.Conv3d(8, 8, (3, 1, 1), 1, (1, 0, 0))
        layers, cin = [], 8
        for cout, stride in blocks:
            layers.append(R21Block(cin, cout, stride, mid))
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv3d(cin, 6, 3, 1, 1) if head else None  # a padded 3x3x3 reader

    def forward(self, x):
        y = self.blocks(torch.relu(self.stem_t(torch.relu(self.stem(x)))))
        return self.head(y) if self.head is not None else y.mean((2, 3, 4))


def _prepare(model: nn.Module, seed: int, scheme: str, rate: float) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return mask_convs(model.eval(), scheme, rate)


CHAINS = {
    "blocks": st.lists(
        st.tuples(st.sampled_from([8, 16]), st.sampled_from([1, 2])), min_size=1, max_size=3
    ),
    "size": st.tuples(st.integers(2, 5), st.integers(9, 23), st.integers(9, 23)),
    "batch": st.integers(1, 2),
    "scheme": st.sampled_from(["kgs", "vanilla", "column", "filter"]),
    "head": st.booleans(),
}


def _check_chain(seed, blocks, size, batch, scheme, head) -> None:
    torch.manual_seed(seed)
    model = _prepare(R21Net(blocks, 12, head), seed, scheme, 0.6)
    shape = (batch, 3, *size)
    compiled = compile_model(model, "cpu", input_shape=shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
        first = compiled(x)
        poison_pools(compiled)  # whatever a pool buffer held must never reach an output
        again = compiled(x * 0.5)
        tol = 1e-5 * ref.abs().max().item()
        assert torch.allclose(first, ref, rtol=1e-4, atol=tol)
        assert torch.allclose(again, model(x * 0.5), rtol=1e-4, atol=tol)
        assert torch.allclose(first, ref, rtol=1e-4, atol=tol)  # the first result kept
    # (which layers store wide depends on the sizes: tiny planes take filter-vectorised tiles,
    # filter pruning shrinks convs dense; the tests below pin down where they do)


@needs_cxx
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), **CHAINS)
def test_chains_of_wide_outputs_equal_the_masked_model(seed, blocks, size, batch, scheme, head):
    _check_chain(seed, blocks, size, batch, scheme, head)


@pytest.mark.slow
@needs_cxx
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), **CHAINS)
def test_60_chains_of_wide_outputs_equal_the_masked_model(seed, blocks, size, batch, scheme, head):
    _check_chain(seed, blocks, size, batch, scheme, head)


@needs_cxx
def test_the_spatial_convs_store_wide_and_their_readers_take_the_view_as_it_lies():
    torch.manual_seed(0)  # weights with which every conv compiles sparse (none stays dense)
    model = _prepare(R21Net([(8, 1), (16, 2)], 12, head=True), 0, "kgs", 0.6)
    shape = (1, 3, 4, 26, 26)
    compiled = compile_model(model, "cpu", input_shape=shape)
    mods = dict(compiled.module.named_modules())
    marked = {n for n, m in mods.items() if getattr(m, "wide_out", False)}
    # every spatial conv's only user is a temporal conv; the block outputs feed convs and residuals
    assert {"stem", "blocks.0.s1", "blocks.0.t1", "blocks.0.s2", "blocks.1.s2"} <= marked
    assert "head" not in marked  # its user is the graph output
    with torch.no_grad():
        ref = model(torch.ones(shape))
        assert torch.allclose(compiled(torch.ones(shape)), ref, rtol=1e-4, atol=1e-6)
    calls = kept_calls(compiled)
    s1, t1 = calls["blocks.0.s1"], calls["blocks.0.t1"]
    assert s1.ops > 0 and s1.view.wide_gather  # stores wide; fills from the stem's wide view
    assert t1.view.pitch == (s1.layout.phased[2], s1.ops)  # reads s1's view where it lies
    assert calls["head"].view.wide_gather  # a padded 3 x 3 x 3 conv fills from a wide view


@needs_cxx
def test_a_layer_takes_wide_views_contiguous_tensors_and_a_residual_of_another_pitch():
    torch.manual_seed(0)  # weights with which every conv compiles sparse (none stays dense)
    model = _prepare(R21Net([(8, 1), (8, 1)], 12, head=True), 1, "kgs", 0.5)
    shape = (2, 3, 3, 22, 30)
    compiled = compile_model(model, "cpu", input_shape=shape)
    mods = dict(compiled.module.named_modules())
    s1, t1, s2, t2 = (mods[f"blocks.0.{n}"] for n in ("s1", "t1", "s2", "t2"))
    assert s1.wide_out and t1.wide_out and t2.wide_out and t2.residual
    block = model.blocks[0]
    x = torch.randn(2, 8, 3, 11, 15)
    with torch.no_grad():
        wide = s1(x)
        assert input_pitch(wide) is not None and not wide.is_contiguous()
        ref = torch.relu(block.t1(torch.relu(block.s1(x))))
        torch.testing.assert_close(t1(wide), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t1(wide.contiguous()), ref, rtol=1e-4, atol=1e-5)
        mid = s2(ref)  # BatchNorm folded, ReLU fused
        torch.testing.assert_close(mid, torch.relu(block.bn(block.s2(ref))), rtol=1e-4, atol=1e-5)
        # t2 stores wide and adds its residual in its own layout: a contiguous residual, a wide
        # one of another pitch (the stem's) and one of its own are all read right
        other = mods["stem"](torch.randn(2, 3, 3, 22, 30))
        assert input_pitch(other) not in (None, input_pitch(t1(wide)))
        for res in (x, other, t1(wide)):
            want = torch.relu(block.t2(torch.relu(block.bn(block.s2(ref)))) + res)
            got = t2(mid, res)
            assert input_pitch(got) is not None
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_cxx
def test_a_slice_with_a_wide_views_strides_but_no_slack_is_copied_not_read_past_its_end():
    torch.manual_seed(0)
    model = _prepare(R21Net([(8, 1)], 12, head=False), 0, "kgs", 0.5)
    compiled = compile_model(model, "cpu", input_shape=(1, 3, 3, 22, 30))
    t1 = dict(compiled.module.named_modules())["blocks.0.t1"]
    big = torch.randn(1, 12, 3, 11, 16)
    x = big[..., :15]  # the strides of a wide view, at the start of its storage, no slack
    assert input_pitch(x) is not None and wide_input(x) is None
    with torch.no_grad():
        want = torch.relu(model.blocks[0].t1(x))
        torch.testing.assert_close(t1(x), want, rtol=1e-4, atol=1e-5)
