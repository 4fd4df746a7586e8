"""Kernel outputs carry zero slack after them, so an unpadded stride-1 sparse conv reads its
input in place instead of copying it into a buffer; a residual sum whose operand is a kernel output
used by nothing else is written into that output.  Both give the masked model's result, call after
call, and leave earlier results alone."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import compile_model, generated
from edgeguard.compiler.generated import (
    OUTPUT_SLACK,
    BufferPool,
    PoolSite,
    has_slack,
    kernel_output,
)
from edgeguard.compiler.passes.inplace import add_into
from edgeguard.sparsity import get_scheme

from .helpers import kept_calls, mask_convs, poison_pools, pool_buffers

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Chain(nn.Module):
    """1x1 convs in a row with a residual: a -> relu -> b (+ a's input via c) -> d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 32, 1)
        self.b = nn.Conv2d(32, 16, 1)
        self.c = nn.Conv2d(8, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        y = self.b(F.relu(self.a(x))) + self.c(x)
        return self.d(y), y.mean()


def test_kernel_outputs_end_in_zero_slack_and_are_recognised():
    out = kernel_output((2, 3, 4, 5))
    assert out.shape == (2, 3, 4, 5) and has_slack(out, 64)
    flat = torch.empty(0).set_(out.untyped_storage())
    assert flat.numel() == out.numel() + OUTPUT_SLACK and not flat[out.numel() :].any()
    assert not has_slack(torch.empty(2, 3, 4, 5), 64)  # an ordinary tensor: no slack
    assert not has_slack(out[1:], 64)  # not the start of its storage
    assert not has_slack(out.transpose(2, 3), 64)  # not contiguous


def test_add_into_writes_into_the_kernel_output_only_when_the_shape_allows():
    a, b = torch.ones(2, 3), torch.full((3,), 2.0)
    assert add_into(a, b) is a and torch.equal(a, torch.full((2, 3), 3.0))
    small = torch.ones(3)
    got = add_into(small, torch.ones(2, 3))  # broadcasting would grow it: a new tensor
    assert got is not small and got.shape == (2, 3) and torch.equal(small, torch.ones(3))
    ints = torch.ones(3, dtype=torch.int64)
    assert add_into(ints, torch.full((3,), 0.5)).dtype == torch.float32


@needs_cxx
@pytest.mark.parametrize("scheme", ["kgs", "column"])
def test_direct_input_and_fused_residual_equal_the_masked_model(scheme):
    torch.manual_seed(4)
    model = Chain().eval()
    mask_convs(model, scheme)
    compiled = compile_model(model, "cpu", max_density=1.0)
    # b's kernel adds c's output (the residual) itself; no sum is left in the graph
    assert compiled.module.b.residual and "add" not in compiled.module.code
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        want = model(x)
    first = compiled(x)
    kept = [t.clone() for t in first]
    second = compiled(2 * x)
    for w, g, k in zip(want, first, kept, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5) and torch.equal(g, k)
    with torch.no_grad():
        want2 = model(2 * x)
    assert all(
        torch.allclose(g, w, rtol=1e-4, atol=1e-4) for g, w in zip(second, want2, strict=True)
    )
    # b reads a's output (after the fused ReLU) in place: it keeps no input buffer of its own
    assert all(c.inbuf is None for c in compiled.module.b._cpu_calls.values())
    assert all(c.inbuf is None for c in compiled.module.d._cpu_calls.values())


class SqueezeExcite(nn.Module):
    """A depthwise output scaled by its own squeeze-excite (mean taken before the product), then a
    1x1 conv; a second branch keeps a view of another depthwise output past its product."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw2 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se = nn.Conv2d(16, 16, 1)
        self.project = nn.Conv2d(16, 8, 1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16).view(1, 16, 1, 1))

    def forward(self, x):
        y = F.relu(self.dw(x))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        z = self.dw2(x)
        head = z[:, :4]  # a view of z, read after z's product
        z = z * self.scale  # would fit in place, but the view of z is read after it
        return self.project(y), head.sum() + z.sum()


@needs_cxx
def test_products_go_into_kernel_outputs_only_when_nothing_reads_them_later():
    torch.manual_seed(5)
    model = SqueezeExcite().eval()
    with torch.no_grad():
        model.project.weight *= get_scheme("kgs").mask(model.project.weight, 0.5)
    compiled = compile_model(model, "cpu", max_density=1.0)
    code = compiled.module.code
    assert code.count("mul_into") == 1  # the SE product; z's product has a view read later
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        want = model(x)
    for _ in range(2):
        got = compiled(x)
        assert all(
            torch.allclose(g, w, rtol=1e-4, atol=1e-4) for g, w in zip(got, want, strict=True)
        )
    assert all(c.inbuf is None for c in compiled.module.project._cpu_calls.values())


class Factorised(nn.Module):
    """(2+1)-D blocks: spatial (1, 3, 3) convs and temporal (k, 1, 1) convs padded along depth
    only; `a` and `b` take inputs of the same layout (4 channels, same size and padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(4, 16, (1, 3, 3), padding=(0, 1, 1))
        self.t = nn.Conv3d(16, 4, (3, 1, 1), padding=(1, 0, 0))
        self.b = nn.Conv3d(4, 16, (1, 3, 3), padding=(0, 1, 1))
        self.t2 = nn.Conv3d(16, 8, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1))

    def forward(self, x):
        return self.t2(F.relu(self.b(F.relu(self.t(F.relu(self.a(x)))))))


@needs_cxx
def test_temporal_convs_read_in_place_and_padded_buffers_come_from_the_pool():
    torch.manual_seed(5)
    model = Factorised().eval()
    mask_convs(model, "kgs")
    compiled = compile_model(model, "cpu", max_density=1.0)
    x = torch.randn(2, 4, 5, 6, 7)
    with torch.no_grad():
        want, want2 = model(x), model(-x)
    first = compiled(x)
    assert torch.allclose(first, want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(compiled(-x), want2, rtol=1e-4, atol=1e-5)
    calls = {
        n: next(iter(compiled.module.get_submodule(n)._cpu_calls.values()))
        for n in ("a", "t", "b", "t2")
    }
    for name in ("t", "t2"):  # depth padding virtual: the kernel reads the previous output as is
        assert calls[name].layout.virtual_depth and calls[name].inbuf is None
    # a and b fill padded buffers taken from the pool (borders written too): none kept per layer
    assert calls["a"].inbuf is None and calls["b"].inbuf is None
    # a temporal layer given a plain tensor (no slack after it) fills an unpadded buffer instead
    layer = compiled.module.t
    y = torch.randn(2, 16, 5, 6, 7).relu()
    with torch.no_grad():
        assert torch.allclose(layer(y), F.relu(model.t(y)), rtol=1e-4, atol=1e-5)


def test_the_pool_hands_out_an_output_buffer_only_when_nothing_references_it():
    pool = BufferPool()
    a = pool.output((2, 3, 4))
    assert has_slack(a, 64)
    b = pool.output((2, 3, 4))  # a is alive: another buffer
    assert a.data_ptr() != b.data_ptr()
    view = a[0]  # a view keeps a's storage alive after a itself is dropped
    ptr = a.data_ptr()
    del a
    c = pool.output((2, 3, 4))
    assert c.data_ptr() not in (ptr, b.data_ptr())
    del view, c
    d = pool.output((2, 3, 4))  # the first buffer is free again: handed out again
    assert d.data_ptr() == ptr and d.shape == (2, 3, 4)
    e = pool.output((5,))  # a smaller output takes a free larger buffer, zeros after it
    assert e.data_ptr() not in (ptr, b.data_ptr()) and has_slack(e, OUTPUT_SLACK)
    tail = torch.empty(0).set_(e.untyped_storage())[5 : 5 + OUTPUT_SLACK]
    assert not tail.any()


def test_a_site_takes_its_last_buffer_again_only_while_nothing_references_it():
    pool, site = BufferPool(), PoolSite()
    a = pool.output((2, 3, 4), site)
    ptr = a.data_ptr()
    b = pool.output((2, 3, 4), site)  # a is alive: the site's buffer is busy, another one
    assert b.data_ptr() != ptr and site.entry[0].data_ptr() == b.data_ptr()
    del a, b
    c = pool.output((2, 3, 4), site)  # the buffer the site got last, without a search
    assert site.entry[0].data_ptr() == c.data_ptr() and c.shape == (2, 3, 4)
    # the slack is zeroed at every hand-out, whatever the buffer held past the output
    torch.empty(0).set_(c.untyped_storage()).fill_(float("nan"))
    del c
    d = pool.output((2, 3, 4), site)
    tail = torch.empty(0).set_(d.untyped_storage())[24 : 24 + OUTPUT_SLACK]
    assert not tail.isnan().any() and not tail.any() and d.is_contiguous()
    e = pool.output((4, 6), site)  # another shape: searched, then remembered
    assert e.shape == (4, 6) and site.shape == (4, 6) and has_slack(e, OUTPUT_SLACK)


def _dirty_empty(n: int) -> torch.Tensor:
    """What a fresh heap allocation may hold, read as floats: subnormals (small integers and the
    top halves of pointers are)."""
    return torch.full((n,), 1e-40)


def test_a_fresh_pool_buffer_is_zero_whatever_memory_it_came_from(monkeypatch):
    monkeypatch.setattr(generated, "plain_empty", _dirty_empty)
    a = BufferPool().output((2, 3, 4))
    assert not torch.empty(0).set_(a.untyped_storage()).any()


class Strided(nn.Module):
    """A stride-2 3x3 conv into a 3x3 conv: at batch 1 on 2 threads each thread fills only the
    rows of its own slot that its tiles read."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


@needs_cxx
def test_no_pool_buffer_keeps_heap_garbage_for_the_dropped_lanes(monkeypatch):
    # Lanes a tile computes and drops still run through the FMAs: fed subnormals (heap garbage
    # read as floats) each costs a microcode assist, a layer 2-5x slower in some processes
    # and not others.  No buffer may keep memory nobody wrote.
    monkeypatch.setattr(generated, "plain_empty", _dirty_empty)
    torch.manual_seed(12)
    model = mask_convs(Strided().eval(), "kgs")
    compiled = compile_model(model, "cpu", max_density=1.0)
    x = torch.randn(1, 16, 16, 16)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            want = model(x)
        for _ in range(2):
            assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
        calls = kept_calls(compiled)
        assert any(c.kernel.schedule(1, 2)["row_fills"] for c in calls.values())
    finally:
        torch.set_num_threads(old)
    flats = pool_buffers(compiled)
    assert flats
    for flat in flats:
        tiny = (flat != 0) & (flat.abs() < torch.finfo(torch.float32).tiny)
        assert not tiny.any()


@needs_cxx
def test_a_chain_of_layers_cycles_through_a_few_output_buffers():
    torch.manual_seed(6)
    convs = [nn.Conv2d(8, 8, 3, padding=1) for _ in range(6)]
    model = nn.Sequential(*[m for c in convs for m in (c, nn.ReLU())]).eval()
    with torch.no_grad():
        for c in convs:
            c.weight *= get_scheme("kgs").mask(c.weight, 0.5)
    compiled = compile_model(model, "cpu", max_density=1.0)
    x = torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        want = model(x)
    got = compiled(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(compiled(x), got)
    pool = next(m.scratch for m in compiled.module.modules() if getattr(m, "scratch", None))
    assert isinstance(pool, BufferPool)
    # six outputs and six padded inputs: three buffers (an output, the next layer's padded
    # input, and the one the next output goes to); two where the kernels fill the sample into
    # their own per-thread buffers (a sample per thread: one thread here)
    calls = [c for m in compiled.sparse_layers().values() for c in m._cpu_calls.values()]
    own = [c.kernel.buffer_floats(1) == 0 for c in calls]
    assert len(set(own)) == 1
    assert len(pool._outputs) == (2 if own[0] else 3)


@needs_cxx
@pytest.mark.parametrize("size", [(3, 5, 7), (4, 6, 6), (2, 9, 11)])
def test_kernels_reading_in_place_never_use_what_lies_past_the_input(size):
    # has_slack accepts any storage with room after the input: fill that room with NaN, and the
    # in-place readers (an unpadded 1x1x1 conv, a depth-padded temporal conv) stay exact
    torch.manual_seed(7)
    convs = [nn.Conv3d(6, 16, 1), nn.Conv3d(6, 16, (3, 1, 1), padding=(1, 0, 0))]
    for conv in convs:
        model = nn.Sequential(conv).eval()
        with torch.no_grad():
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.5)
        compiled = compile_model(model, "cpu", max_density=1.0)
        (layer,) = compiled.sparse_layers().values()
        n = 6 * size[0] * size[1] * size[2]
        big = torch.full((n + OUTPUT_SLACK + 100,), float("nan"))
        x = big[:n].view(1, 6, *size)
        x.copy_(torch.randn(1, 6, *size))
        assert has_slack(x, 64)
        with torch.no_grad():
            got = layer(x)
            want = model(x)
        call = next(iter(layer._cpu_calls.values()))
        assert call.inbuf is None  # read in place
        assert torch.isfinite(got).all() and torch.allclose(got, want, rtol=1e-4, atol=1e-5)


class Padded(nn.Module):
    """Convs whose kernels fill padded buffers: 3-D padded on every axis, strided (phase split),
    depth-padded temporal, and a 1x1x1 strided subsample."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(3, 16, 3, padding=1)
        self.b = nn.Conv3d(16, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.c = nn.Conv3d(16, 8, (3, 1, 1), padding=(1, 0, 0))
        self.d = nn.Conv3d(16, 8, 1, stride=2)

    def forward(self, x):
        y = F.relu(self.b(F.relu(self.a(x))))
        return self.c(y), self.d(y)


@needs_cxx
def test_padded_buffers_are_written_whole_whatever_the_pool_buffer_held():
    # every pool buffer is filled with NaN between calls: the kernels' fills must write the
    # padding too, or NaN reaches the outputs
    torch.manual_seed(8)
    model = Padded().eval()
    mask_convs(model, "kgs")
    compiled = compile_model(model, "cpu", max_density=1.0)
    pool = next(m.scratch for m in compiled.module.modules() if getattr(m, "scratch", None))
    for k in range(3):
        x = torch.randn(2, 3, 4, 9, 11)
        poison_pools(compiled)
        with torch.no_grad():
            want = model(x)
        got = compiled(x)
        assert pool._outputs, k
        for g, w in zip(got, want, strict=True):
            assert torch.isfinite(g).all() and torch.allclose(g, w, rtol=1e-4, atol=1e-5)


@needs_cxx
def test_without_storage_use_counts_each_layer_keeps_its_own_buffers(monkeypatch):
    # the pool relies on a private PyTorch API: without it the compiled model still works
    monkeypatch.setattr(BufferPool, "available", staticmethod(lambda: False))
    torch.manual_seed(11)
    model = mask_convs(Factorised().eval(), "kgs")
    compiled = compile_model(model, "cpu", max_density=1.0)
    assert all(getattr(m, "scratch", None) is None for m in compiled.module.modules())
    x = torch.randn(2, 4, 5, 6, 7)
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    # a 2-D model: its first call keeps 5-D buffers, the kept calls after it take them as 4-D
    chain = Chain().eval()
    mask_convs(chain, "kgs")
    compiled2 = compile_model(chain, "cpu", max_density=1.0)
    assert all(getattr(m, "scratch", None) is None for m in compiled2.module.modules())
    x2 = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        want2 = chain(x2)
    for _ in range(2):
        for g, w in zip(compiled2(x2), want2, strict=True):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


@needs_cxx
def test_without_the_pool_row_fill_buffers_grow_with_the_threads(monkeypatch):
    # a batch-1 2-D conv's row fills take batch + threads - 1 slots of its kept input buffer:
    # called on 2 threads, then 4, the kept buffer must grow, not be overrun
    monkeypatch.setattr(BufferPool, "available", staticmethod(lambda: False))
    torch.manual_seed(12)
    model = mask_convs(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval(), "kgs")
    compiled = compile_model(model, "cpu", max_density=1.0)
    x = torch.randn(1, 8, 64, 32)
    old = torch.get_num_threads()
    try:
        for threads in (2, 4, 2):
            torch.set_num_threads(threads)
            for scale in (1.0, -1.0):
                with torch.no_grad():
                    want, got = model(x * scale), compiled(x * scale)
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            calls = [c for m in compiled.sparse_layers().values() for c in m._cpu_calls.values()]
            assert calls[0].kernel.schedule(1, threads)["row_fills"]
            assert calls[0].inbuf.numel() >= calls[0].kernel.buffer_floats(1)
    finally:
        torch.set_num_threads(old)
