"""Replayed forwards (compiler/replay.py): from the third call of a shape the kernel layers'
native calls are repeated without their Python, with the results of the Python path."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.replay import Recorder, segments
from edgeguard.compiler.sparse_conv import SparseConv
from edgeguard.sparsity import get_scheme

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Net(nn.Module):
    """Convs with a residual and a strided step, then a max-pooled linear head (not kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y) + y)
        y = torch.relu(self.c(y))
        return self.fc(y.amax((2, 3)))


def _masked(cls: type[nn.Module], seed: int) -> nn.Module:
    """``cls()`` in eval mode, its convs ``a``, ``b``, ``c`` KGS-masked at rate 0.6."""
    torch.manual_seed(seed)
    model = cls().eval()
    with torch.no_grad():
        for m in (model.a, model.b, model.c):
            m.weight *= get_scheme("kgs").mask(m.weight, 0.6)
    return model


def _model() -> nn.Module:
    return _masked(Net, 0)


def test_the_recorder_keeps_views_and_zeroing_and_refuses_other_writes():
    t = torch.ones(16)
    with Recorder() as rec:
        v = t.view(4, 4)[1]  # views of t's memory
        t[4:8].zero_()
        assert rec.refused is None
        assert rec.ops[0][1] == (t.data_ptr() + 16, 16, 1, 0)  # the zeroed range: bytes 16-31
        t.view(4, 4)[1:3, :2].zero_()  # two rows of 2 floats, 16 bytes apart
        assert rec.refused is None and rec.ops[1][1] == (t.data_ptr() + 16, 8, 2, 16)
        v.add_(1.0)
    assert rec.refused == "add_"
    index = torch.tensor([0, 2])
    with Recorder() as rec:
        t[index]  # an indexed read copies
    assert rec.refused == "__getitem__"
    wide = t.view(2, 8)[:, :4]
    with Recorder() as rec:
        dense = wide.contiguous()  # a copy into fresh memory: replayed as a strided copy
        t.view(2, 8)[:, 4:].copy_(dense)  # rows of 4 floats, 32 bytes apart
        assert rec.refused is None
        (ptr, src, width, rows, dstep, sstep, planes, *_), copy = rec.ops[0][1], rec.ops[1][1]
        assert (ptr, src, width, rows, dstep, sstep, planes) == (
            dense.data_ptr(),
            t.data_ptr(),
            16,
            2,
            16,
            32,
            1,
        )
        assert copy[:6] == (t.data_ptr() + 16, dense.data_ptr(), 16, 2, 32, 16)
        wide.clone()  # any other copy
    assert rec.refused == "clone"


@needs_cxx
def test_later_calls_replay_the_kernels_without_the_layers_python(monkeypatch):
    model = _model()
    comp = compile_model(model, "cpu", input_shape=(2, 3, 12, 12))
    comp._replayer.partial = True  # Net's head (a mean) is Python: off by default
    xs = [torch.randn(2, 3, 12, 12) for _ in range(4)]
    with torch.no_grad():
        first = comp(xs[0])  # the Python path
        comp(xs[1])  # recorded
        plans = next(iter(comp._replayer.plans.values()))
        assert plans and all(p is not None for p in plans.values())

        def no_python(*args, **kwargs):
            raise AssertionError("a replayed layer ran its Python")

        monkeypatch.setattr(SparseConv, "forward", no_python)
        for x in (xs[2], xs[0], xs[3]):
            got = comp(x)
            want = model(x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        # the same kernels on the same input: bit for bit what the Python path gave
        assert torch.equal(comp(xs[0]), first)


@needs_cxx
def test_each_thread_count_records_its_own_plan():
    model = _model()
    comp = compile_model(model, "cpu", input_shape=(1, 3, 12, 12))
    comp._replayer.partial = True
    x = torch.randn(1, 3, 12, 12)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            want = model(x)
            for n in (1, 2):
                torch.set_num_threads(n)
                for _ in range(3):
                    assert (comp(x) - want).abs().max() <= 1e-4 * want.abs().max()
    finally:
        torch.set_num_threads(threads)
    assert sorted(key[1] for key in comp._replayer.plans) == [1, 2]


@needs_cxx
def test_moving_the_model_forgets_its_plans():
    comp = compile_model(_model(), "cpu", input_shape=(1, 3, 12, 12))
    comp._replayer.partial = True
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        for _ in range(3):
            comp(x)
    assert comp._replayer.plans
    comp.float()
    assert not comp._replayer.plans


@needs_cxx
def test_segments_are_runs_of_kernel_layers_with_their_inputs_and_outputs():
    comp = compile_model(_model(), "cpu")  # ReLUs and the residual sum fused into the convs
    (seg,) = segments(comp.module)
    assert [n.target for n in seg.nodes] == ["a", "b", "c"]
    assert [n.op for n in seg.inputs] == ["placeholder"]
    assert [n.target for n in seg.outputs] == ["c"]


class Classifier(nn.Module):
    """Kernel layers from input to logits: convs, a max pool, the pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv2d(16, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 7)

    def forward(self, x):
        y = self.pool(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(self.gap(torch.relu(self.c(y))).flatten(1))


def _classifier() -> nn.Module:
    return _masked(Classifier, 1)


@needs_cxx
def test_a_graph_that_is_one_run_replays_as_one_native_call(monkeypatch):
    from edgeguard.compiler import replay

    model = _classifier()
    comp = compile_model(model, "cpu", input_shape=(2, 3, 16, 16))
    xs = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        first = comp(xs[0])
        comp(xs[1])
        assert list(comp._replayer.chains) == [
            (torch.Size((2, 3, 16, 16)), torch.get_num_threads())
        ]

        def no_python(*args, **kwargs):
            raise AssertionError("the chained forward ran Python between its kernels")

        monkeypatch.setattr(replay.Replayer, "__call__", no_python)
        monkeypatch.setattr(replay.SegmentPlan, "run", no_python)
        outs = [comp(x) for x in (*xs, xs[0])]
    for x, got in zip(xs, outs, strict=False):
        want = model(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert torch.equal(outs[-1], first)  # bit for bit the Python path's result
    assert len({t.data_ptr() for t in outs}) == len(outs)  # a new tensor every call


def _chained_classifier():
    """``(model, compiled, x)``: the classifier compiled for ``x``'s shape, whose calls now
    replay as one native call."""
    model = _classifier()
    comp = compile_model(model, "cpu", input_shape=(1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for _ in range(2):
            comp(x)
    assert comp._replayer.chains
    return model, comp, x


@needs_cxx
def test_the_chained_forward_leaves_other_inputs_to_the_general_path():
    model, comp, x = _chained_classifier()
    with torch.no_grad():
        bad = x.clone()
        bad[0, 1, 3, 4] = float("inf")
        want = model(bad)  # NaN and Inf where the model gives them
        got = comp(bad)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want).any()
        wide = torch.randn(1, 3, 16, 32)[..., ::2]  # not contiguous: copied, not read in place
        assert (comp(wide) - model(wide)).abs().max() <= 1e-4 * model(wide).abs().max()
    with pytest.raises(Exception, match="inference-only"):
        comp(x.clone().requires_grad_())


@needs_cxx
def test_hooks_on_a_chained_model_still_run():
    # the chained call skips nn.Module.__call__ only where no hook would run
    _, comp, x = _chained_classifier()
    with torch.no_grad():
        plain = comp(x)
        seen = []
        pre = comp.register_forward_pre_hook(lambda m, args: seen.append("pre"))
        post = comp.register_forward_hook(lambda m, args, out: out * 2)
        assert torch.equal(comp(x), 2 * plain) and seen == ["pre"]
        pre.remove()
        post.remove()
        glob = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: out + 1)
        try:
            assert torch.equal(comp(x), plain + 1)
        finally:
            glob.remove()
        assert torch.equal(comp(x), plain)


@needs_cxx
def test_calls_inside_and_outside_inference_mode_share_the_kept_buffers():
    """Buffers allocated during a call under torch.inference_mode() are zeroed in place by later
    calls outside it: they must not be inference tensors (PyTorch refuses that in-place write)."""
    model = _classifier()
    comp = compile_model(model, "cpu", input_shape=(1, 3, 16, 16))
    xs = [torch.randn(n, 3, 16, 16) for n in (1, 3, 1, 3)]
    for i, x in enumerate(xs * 2):
        with torch.inference_mode(i % 2 == 0):
            got = comp(x)
        with torch.no_grad():
            want = model(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_a_new_input_size_keeps_the_plans_of_the_others():
    model = _classifier()
    comp = compile_model(model, "cpu", input_shape=(1, 3, 16, 16))
    with torch.no_grad():
        for n in (1, 2, 3):
            x = torch.randn(n, 3, 16, 16)
            for _ in range(3):  # a new size builds its kernels on its first call
                comp(x)
    assert sorted(k[0][0] for k in comp._replayer.chains) == [1, 2, 3]


@needs_cxx
@pytest.mark.parametrize("act", ["relu", "hard_swish"])
def test_a_chain_through_a_fused_expand_and_depthwise_kernel_equals_the_model(act):
    """The fused 1x1 + depthwise kernel takes a float argument (kind 4 of the chain runner)."""
    from edgeguard.compiler.pointwise_depthwise import PointwiseDepthwiseCpu

    from .test_pointwise_depthwise import Block

    torch.manual_seed(2)
    model = Block(act).eval()
    with torch.no_grad():
        for m in (model.expand, model.project):
            m.weight *= (torch.rand_like(m.weight) < 0.3).float()
    comp = compile_model(model, "cpu", input_shape=(1, 8, 40, 40))
    assert isinstance(comp.module.dw, PointwiseDepthwiseCpu)
    xs = [torch.randn(1, 8, 40, 40) for _ in range(4)]
    with torch.no_grad():
        outs = [comp(x) for x in xs]
        assert comp._replayer.chains  # the last two calls went through the chain runner
        for x, got in zip(xs, outs, strict=True):
            want = model(x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_the_build_dry_run_is_not_taken_for_the_first_call():
    """compile_model(input_shape=...) runs the model once with the standard ops to learn the
    layer sizes; the first real call must still run on Python (it allocates the buffers), so
    that the second one records a steady state."""
    comp = compile_model(_classifier(), "cpu", input_shape=(1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        comp(x)
        assert not comp._replayer.plans
        comp(x)
    (plans,) = comp._replayer.plans.values()
    assert all(p is not None for p in plans.values())


@needs_cxx
def test_a_float64_default_dtype_does_not_reach_the_float32_buffers():
    model = _classifier()
    comp = compile_model(model, "cpu", input_shape=(1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            outs = [comp(x) for _ in range(3)]  # Python path, recorded, chained
        finally:
            torch.set_default_dtype(default)
    for got in outs:
        assert got.dtype == torch.float32
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_a_graph_that_cannot_chain_never_records_unless_asked():
    comp = compile_model(_model(), "cpu", input_shape=(1, 3, 12, 12))  # its amax: Python
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        for _ in range(3):
            comp(x)
    assert not comp._replayer.plans and not comp._replayer.chains


class PooledChain(nn.Module):
    """Convs with a max pool after the second: the pool may be fused into that conv's kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.relu(self.c(self.pool(y)))


@needs_cxx
def test_a_graph_whose_pool_the_build_fuses_replays_the_fused_graph(monkeypatch):
    # The build for the first input shape fuses a large conv output's max pool into the conv,
    # which removes the pool's node; the runs found before (its dry run) named that node, and
    # the recording call then ran the removed pool on nothing
    from edgeguard.compiler.passes import pool_fusion

    monkeypatch.setattr(pool_fusion, "FUSE_POOL_MIN_BYTES", 0)
    model = _masked(PooledChain, 2)
    comp = compile_model(model, "cpu", input_shape=(1, 3, 16, 16))
    assert any(m.pool for m in comp.sparse_layers().values())
    with torch.no_grad():
        for _ in range(4):  # Python, recorded, replayed twice
            x = torch.randn(1, 3, 16, 16)
            want, got = model(x), comp(x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert comp._replayer.chains  # the fused graph is one run


class ResClassifier(nn.Module):
    """Kernel layers with residual sums at 16 x 16 and 8 x 8 (batch-last from batch 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 7)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = self.pool(torch.relu(self.b(y) + y))
        y = torch.relu(self.c(y) + y)
        return self.fc(self.gap(torch.relu(self.d(y))).flatten(1))


@needs_cxx
@pytest.mark.parametrize("batch", [1, 8])
def test_a_model_with_a_few_dead_filters_still_replays_as_one_native_call(batch):
    # filters with no kept weight output their bias (plus the residual, through the ReLU); written
    # from Python by an indexed copy, they kept the whole forward from replaying (ResNet-18 at
    # batch 1 ran 1.5x slower for one dead filter group in conv1)
    torch.manual_seed(2)
    model = ResClassifier().eval()
    with torch.no_grad():
        for name, dead in (("a", [0, 5]), ("b", [3, 9, 10]), ("c", [1]), ("d", [4, 31])):
            conv = getattr(model, name)
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.5)
            conv.weight[dead] = 0.0
            conv.bias[dead] = torch.linspace(-0.5, 0.5, len(dead))
    shape = (batch, 3, 16, 16)
    comp = compile_model(model, "cpu", input_shape=shape)
    assert all(len(m.plan.dead) > 0 for m in comp.sparse_layers().values())
    xs = [torch.randn(shape) for _ in range(3)]
    with torch.no_grad():
        outs = [comp(x) for x in xs]
        assert list(comp._replayer.chains) == [(torch.Size(shape), torch.get_num_threads())]
        outs.append(comp(xs[0]))
        for x, got in zip([*xs, xs[0]], outs, strict=True):
            want = model(x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
def test_a_conv_left_dense_is_lowered_where_the_forward_then_replays_as_one_call():
    # "a" is unpruned (too dense to pay off alone), which left the forward to its Python path
    torch.manual_seed(3)
    model = ResClassifier().eval()
    with torch.no_grad():
        for conv in (model.b, model.c, model.d):
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
    shape = (1, 3, 16, 16)
    x = torch.randn(shape)
    comp = compile_model(model, "cpu", input_shape=shape)
    (a,) = [d for d in comp.decisions if d.name == "a"]
    assert a.action == "sparse" and "lowered though dense" in a.detail
    with torch.no_grad():
        for _ in range(3):
            got = comp(x)
        assert comp._replayer.chains
        assert (got - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
    # a max_density given is obeyed: "a" stays a dense op, and nothing chains
    strict = compile_model(model, "cpu", input_shape=shape, max_density=0.8)
    assert {d.name: d.action for d in strict.decisions}["a"] == "dense"
    with torch.no_grad():
        for _ in range(3):
            strict(x)
    assert not strict._replayer.chains


class Upsampled(nn.Module):
    """A dense conv, a sparse one, an upsampling between: never one run of kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.b(nn.functional.interpolate(torch.relu(self.a(x)), scale_factor=2.0))


@needs_cxx
def test_a_dense_conv_stays_dense_where_other_ops_split_the_forward_anyway():
    torch.manual_seed(4)
    model = Upsampled().eval()
    with torch.no_grad():
        model.b.weight *= get_scheme("kgs").mask(model.b.weight, 0.6)
    comp = compile_model(model, "cpu")
    assert {d.name: d.action for d in comp.decisions} == {"a": "dense", "b": "sparse"}
