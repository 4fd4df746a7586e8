"""Kernel views of a layer input: a 2-D layer on a small output plane at batch >= 8 runs
batch-last (the batch folded into the positions), and a 1 x 1 strided conv runs at stride 1 on the
subsample it reads.  Both give PyTorch's dense result, keyed kernels stay apart, and a compiled
model keeps earlier outputs intact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import SparseConv, compile_model, plan_conv
from edgeguard.compiler.plan import ConvGeometry
from edgeguard.compiler.sparse_conv import BATCH_LAST_MIN_BATCH, batch_last_geometry
from edgeguard.sparsity import get_scheme

from .test_kernels import masked_conv, needs_cxx


def test_batch_last_geometry_moves_the_2d_axes_forward_and_keeps_rows():
    g = ConvGeometry(4, 8, (1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 3))
    b = batch_last_geometry(g)
    assert b.kernel == (3, 5, 1) and b.stride == (2, 1, 1)
    assert b.padding == (1, 2, 0) and b.dilation == (1, 3, 1)
    assert b.locations == g.locations  # row id c * L + kh * KW + kw is the same on both


def test_batch_last_only_for_2d_small_planes_from_the_minimum_batch():
    conv = SparseConv(plan_conv(masked_conv(8, 16, 3, 1, 1, 1, dims=2)), two_d=True, mode="torch")
    n = BATCH_LAST_MIN_BATCH
    assert conv.batch_last((n, 8, 1, 8, 8))
    assert not conv.batch_last((n - 1, 8, 1, 8, 8))  # too few samples to fill the positions
    assert not conv.batch_last((n, 8, 1, 16, 16))  # a 16 x 16 plane fills its tiles alone
    pointwise = SparseConv(
        plan_conv(masked_conv(8, 16, 1, 1, 0, 1, dims=2)), two_d=True, mode="torch"
    )
    assert not pointwise.batch_last((n, 8, 1, 8, 8))  # no padding columns to save
    conv.pool = (1, 2, 2)  # a fused pool needs whole windows in the plane
    assert not conv.batch_last((n, 8, 1, 8, 8))


@needs_cxx
@pytest.mark.parametrize(
    "k, s, p, d, size",
    [
        (3, 1, 1, 1, 4),
        (3, 1, 1, 1, 2),  # a 2 x 2 plane: at batch 8 the view's plane is 16 positions (FV tiles)
        (3, 2, 1, 1, 8),
        (3, 1, 2, 2, 6),
        (1, 1, 0, 1, 5),
        (3, 1, 0, 1, 7),
        (5, 2, 2, 1, 9),
    ],
)
# batch 32 at 4 x 4 and 8 x 8 planes: the fill's AVX-512 transposes (16 samples x 16 positions)
@pytest.mark.parametrize("batch", [8, 19, 32])
def test_batch_last_kernel_matches_dense(k, s, p, d, size, batch):
    conv = masked_conv(12, 24, k, s, p, d, dims=2)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    x = torch.randn(batch, 12, size, size)
    sc.batch_last = lambda shape: shape[0] >= 8  # 1 x 1 too (the default leaves them plain)
    with torch.no_grad():
        want = F.relu(conv(x))
        got = sc(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    # the same layer at batch 1 takes the plain kernel, under its own key
    with torch.no_grad():
        one = sc(x[:1])
    assert (one - want[:1]).abs().max() <= 1e-4 * want.abs().max()
    keys = {key[0] for key in sc._kernels}
    assert keys == {"cpu", "cpu-batch-last"}


@needs_cxx
@pytest.mark.parametrize("batch, size", [(1, 16), (3, 7), (8, 9), (16, 8)])
@pytest.mark.parametrize("dead", [False, True])
def test_pointwise_strided_conv_reads_only_its_subsample(batch, size, dead):
    conv = masked_conv(16, 32, 1, 2, 0, 1, dims=2)
    if dead:  # every filter dead: the output is the bias
        with torch.no_grad():
            conv.weight.zero_()
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu")
    assert sc._kernel_view((batch, 16, 1, size, size)).subsample == (1, 2, 2)
    x = torch.randn(batch, 16, size, size)
    with torch.no_grad():
        want, got = conv(x), sc(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * (want.abs().max() + 1e-6)


class TwoSmall(nn.Module):
    """A residual stage on an 8 x 8 plane: a strided 3 x 3, a 1 x 1 strided shortcut, a conv used
    twice (its second call must not overwrite the first's output) and dead filters."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, 2, 1)
        self.b = nn.Conv2d(16, 16, 3, 1, 1)
        self.short = nn.Conv2d(8, 16, 1, 2)

    def forward(self, x):
        y = F.relu(self.a(x))
        z = self.b(y) + self.short(x)
        return self.b(F.relu(z)) - self.b(y), z


@needs_cxx
def test_compiled_model_at_batch_last_sizes_equals_masked_call_after_call():
    torch.manual_seed(0)
    model = TwoSmall().eval()
    with torch.no_grad():
        for m in (model.a, model.b, model.short):
            m.weight *= get_scheme("kgs", gm=4, gn=4).mask(m.weight, 0.6)
            m.bias.uniform_(-0.5, 0.5)
        model.a.weight[:4] = 0  # dead filters: their output is the bias
    x = torch.randn(16, 8, 16, 16)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape), max_density=1.0)
    with torch.no_grad():
        want = model(x)
        want2 = model(x * 0.5)
    first = compiled(x)
    kept = [t.clone() for t in first]
    second = compiled(x * 0.5)
    for w, g, k in zip(want, first, kept, strict=True):
        assert (g - w).abs().max() <= 1e-4 * w.abs().max()
        assert torch.equal(g, k)
    for w, g in zip(want2, second, strict=True):
        assert (g - w).abs().max() <= 1e-4 * w.abs().max()
    used = [m for m in compiled.module.modules() if isinstance(m, SparseConv)]
    assert any(key[0] == "cpu-batch-last" for m in used for key in m._kernels)


@needs_cxx
def test_batch_last_residual_layer_is_exact_call_after_call_on_fresh_buffers():
    """The batch-last fill and the transpose back, split between threads, on buffers that are
    fresh memory at every call (no buffer kept): a race between the threads' writes shows as
    whole blocks of samples wrong in some calls (a fill split by sample blocks did this)."""
    torch.manual_seed(0)
    conv = masked_conv(16, 16, 3, 1, 1, 1, dims=2)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    sc.residual = True
    x, r = torch.randn(32, 16, 4, 4), torch.randn(32, 16, 4, 4)
    assert sc.batch_last((32, 16, 1, 4, 4))
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        for _ in range(20):
            got = sc(x, r)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


class PerSample(nn.Module):
    """Padded and strided 3 x 3 convs and a residual on 16 x 16 planes (not batch-last): at a
    batch of a sample per thread or more each thread fills one sample at a time into its own
    buffer (the per-sample fills of the CPU kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, 1, 1)
        self.b = nn.Conv2d(16, 16, 3, 2, 1)
        self.c = nn.Conv2d(16, 16, 3, 1, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        z = F.relu(self.b(y))
        return F.relu(self.c(z) + z)


@needs_cxx
@pytest.mark.parametrize("batch", [2, 5])
def test_per_sample_fills_equal_the_masked_model_call_after_call(batch):
    torch.manual_seed(0)
    model = PerSample().eval()
    with torch.no_grad():
        for m in (model.a, model.b, model.c):
            m.weight *= get_scheme("kgs", gm=4, gn=4).mask(m.weight, 0.6)
    shape = (batch, 8, 32, 32)
    compiled = compile_model(model, "cpu", input_shape=shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a sample per thread or more: the per-sample path
    try:
        with torch.no_grad():
            for scale in (1.0, -0.5, 2.0):  # each call refills every sample's buffer
                x = torch.randn(shape) * scale
                want, got = model(x), compiled(x)
                assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        # the layers filling per sample took no batch-sized input buffer from the pool
        calls = [c for m in compiled.sparse_layers().values() for c in m._cpu_calls.values()]
        own = [c for c in calls if c.kernel.buffer_floats(batch) == 0]
        assert own and all(c.buf_site.shape is None for c in own)
    finally:
        torch.set_num_threads(threads)


@needs_cxx
@pytest.mark.parametrize("stride", [1, 2])
def test_batch_last_kernels_take_whole_tasks_and_no_batch_1_prefetch_paths(stride):
    # A batch-last kernel runs as one "sample" (the batch folded into its positions), fewer than
    # the threads; its whole-plane tasks must not be split by filter blocks (each part would read
    # the whole phase buffer again: ResNet-18's layer4.0.conv1 ran 1.4x slower so)
    conv = masked_conv(16, 64, 3, stride, 1, 1, dims=2)
    sc = SparseConv(plan_conv(conv, mr=8), two_d=True, mode="cpu", relu=True)
    x = torch.randn(32, 16, 8, 8)
    ref = F.relu(conv(x))
    y = sc(x)
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()
    (kernel,) = sc._kernels.values()
    for threads in (2, 4):
        assert kernel.schedule(1, threads) == {"per_sample": False, "row_fills": False, "parts": 1}
