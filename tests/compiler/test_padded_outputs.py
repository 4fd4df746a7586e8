"""Wide outputs written into their reader's padded buffer (docs/compiler.md, "Padded outputs"): a
temporal conv whose output a padded spatial conv reads stores it in that reader's padded layout
(aligned planes, the padding zeroed around it), the reader runs without a fill, and a fused
residual in that layout is read where it lies.  Outputs equal the masked model's whatever the
pool's buffers held, and every kernel is built before the first call."""

from __future__ import annotations

import shutil

import pytest
import torch

from edgeguard.compiler import compile_model
from edgeguard.compiler.layout import InputLayout
from edgeguard.compiler.plan import ConvGeometry
from edgeguard.compiler.sparse_conv import padded_for

from .helpers import kept_calls, poison_pools
from .test_wide_outputs import R21Net, _prepare

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


def test_aligned_planes_start_on_lines_and_keep_the_padding_before_the_data():
    g = ConvGeometry(4, 8, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1))
    lay = InputLayout(g, (3, 7, 9), aligned_planes=True)
    plain = InputLayout(g, (3, 7, 9))
    assert lay.phased == plain.phased == (3, 9, 10)  # rows share their zero column: 9 + 1
    assert plain.plane_stride == 90 and lay.plane_stride == 96
    assert lay.head == 1 * 10 + 1  # one padding row, then the row's padding column
    assert lay.batch_stride == 4 * 3 * 96
    # a kept row's offset is the same in both but for the planes' stride
    rows = torch.tensor([0, 8, 9 + 4])
    assert torch.equal(lay.row_offsets(rows) % 96, plain.row_offsets(rows) % 90)
    x = torch.randn(2, 4, 3, 7, 9)
    buf = lay.prepare(x, slack=16)
    view = buf.as_strided((2, 4, 3, 7, 9), (4 * 3 * 96, 3 * 96, 96, 10, 1), lay.head)
    assert torch.equal(view, x)
    strided = ConvGeometry(4, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="stride 1"):
        InputLayout(strided, (3, 7, 9), aligned_planes=True)


@needs_cxx
def test_temporal_outputs_are_written_into_the_spatial_readers_padded_buffer():
    torch.manual_seed(0)  # weights with which every conv compiles sparse (none stays dense)
    model = _prepare(R21Net([(8, 1), (8, 1), (16, 2)], 12, head=False), 0, "kgs", 0.6)
    shape = (2, 3, 3, 22, 30)
    compiled = compile_model(model, "cpu", input_shape=shape)
    x = torch.randn(shape)
    with torch.no_grad():
        want = model(x)
        first = compiled(x)
        for k in range(3):  # NaN in every free pool buffer: the padding must be written
            assert poison_pools(compiled)
            got = compiled(x * (k + 1))
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, model(x * (k + 1)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-5)
    calls = kept_calls(compiled)
    mods = dict(compiled.module.named_modules())
    for b in ("blocks.0", "blocks.1"):
        t1, s2 = calls[f"{b}.t1"], calls[f"{b}.s2"]
        assert mods[f"{b}.t1"].pad_reader == (mods[f"{b}.s2"],)
        assert t1.head == s2.layout.head > 0 and t1.ops == s2.layout.plane_stride
        assert s2.view.prepadded and s2.layout.aligned_planes and s2.inbuf is None
    # block 0's output goes into block 1's first spatial conv's buffer; block 1's second
    # temporal conv adds it as its residual where it lies, with its own plane stride, although
    # its own output (read by the strided block 2) is a plain wide one
    t2a, t2b = calls["blocks.0.t2"], calls["blocks.1.t2"]
    assert t2a.head > 0 and calls["blocks.1.s1"].view.prepadded
    assert t2b.head == 0 and t2b.res_pitch == (t2b.wide[0], t2a.ops) != t2b.wide


@needs_cxx
def test_every_kernel_is_built_before_the_first_call():
    torch.manual_seed(0)
    model = _prepare(R21Net([(8, 1), (8, 1), (16, 2)], 12, head=True), 0, "kgs", 0.6)
    shape = (1, 3, 3, 22, 30)
    compiled = compile_model(model, "cpu", input_shape=shape)
    layers = [m for m in compiled.module.modules() if hasattr(m, "_kernels")]
    built = {id(m): set(m._kernels) for m in layers}
    with torch.no_grad():
        compiled(torch.randn(shape))
    assert all(set(m._kernels) == built[id(m)] for m in layers)  # none built at the call
    assert any(c.view.prepadded for c in kept_calls(compiled).values())


@needs_cxx
def test_a_padded_view_is_taken_as_such_only_by_its_own_reader():
    torch.manual_seed(0)
    model = _prepare(R21Net([(8, 1)], 12, head=False), 0, "kgs", 0.6)
    shape = (1, 3, 3, 22, 30)
    compiled = compile_model(model, "cpu", input_shape=shape)
    mods = dict(compiled.module.named_modules())
    block = model.blocks[0]
    t1, s2, s1 = mods["blocks.0.t1"], mods["blocks.0.s2"], mods["blocks.0.s1"]
    x = torch.randn(1, 8, 3, 11, 15).relu()
    with torch.no_grad():
        y = t1(s1(x))
        assert padded_for(y, s2) and not padded_for(y, s1) and not padded_for(y.clone(), s2)
        want = torch.relu(block.bn(block.s2(torch.relu(block.t1(torch.relu(block.s1(x)))))))
        torch.testing.assert_close(s2(y), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s2(y.contiguous()), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s2(y + 0), want, rtol=1e-4, atol=1e-5)


@needs_cxx
def test_the_padding_in_dead_filters_planes_is_zeroed_too():
    # vanilla pruning leaves filters of a residual block's last conv with no kept weight: the
    # kernel writes their planes too (the bias plus the residual), their columns past each row
    # end, the reader's padding, as zeros like every other filter's
    torch.manual_seed(1)
    model = _prepare(R21Net([(16, 1), (8, 1)], 12, head=False), 1, "vanilla", 0.6)
    shape = (1, 3, 2, 9, 9)
    compiled = compile_model(model, "cpu", input_shape=shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        for _ in range(2):
            assert poison_pools(compiled)
            got = compiled(x)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    t2 = compiled.module.get_submodule("blocks.0.t2")
    assert len(t2.plan.dead) > 0 and kept_calls(compiled)["blocks.0.t2"].head > 0


@needs_cxx
def test_a_forward_of_padded_outputs_replays_as_one_native_call():
    # the padding a padded output leaves (each plane's leading columns: a strided range) is
    # zeroed, and a residual of another pitch copied into the reader's layout, by the chain
    # runner: recorded as strided zero and copy ops (R(2+1)D ran its Python before: 1.1x slower)
    from edgeguard.compiler import replay

    torch.manual_seed(0)
    model = _prepare(R21Net([(8, 1), (8, 1), (16, 2)], 12, head=True), 0, "kgs", 0.6)
    shape = (2, 3, 3, 22, 30)
    compiled = compile_model(model, "cpu", input_shape=shape)
    with torch.no_grad():
        for k in range(5):
            x = torch.randn(shape) * (k + 1)
            assert poison_pools(compiled) or k == 0  # (the recorded buffers too)
            got = compiled(x)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    (chain,) = compiled._replayer.chains.values()
    ops = chain.plan.ops
    assert any(fn is replay._ZERO and args[2] > 1 for fn, args in ops)  # strided zeroing
    assert any(fn is replay._COPY for fn, _ in ops)  # a residual of another pitch
