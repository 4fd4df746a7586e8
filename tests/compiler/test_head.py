"""The generated classifier head (compiler/head.py, passes/head_fusion.py): global average pool,
flatten and a dense Linear as one CPU kernel, against PyTorch's three ops."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.errors import CompileError
from edgeguard.compiler.head import PooledLinearCpu
from edgeguard.compiler.passes.head_fusion import fuse_heads

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


@needs_cxx
@pytest.mark.parametrize(
    "shape",
    [(1, 512, 4, 4), (3, 64, 7, 5), (32, 24, 1, 1), (2, 16, 3, 4, 5), (4, 300, 16, 16)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_head_kernel_equals_pool_flatten_linear(shape, bias):
    torch.manual_seed(0)
    dims = len(shape) - 2
    lin = nn.Linear(shape[1], 13, bias=bias)
    head = PooledLinearCpu(lin, "fc", dims)
    x = torch.randn(*shape)
    pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
    with torch.no_grad():
        want = lin(torch.flatten(pool(x, 1), 1))
        got = head(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    head.mode = "torch"  # the standard ops (ONNX export, other dtypes)
    with torch.no_grad():
        assert torch.allclose(head(x), want, rtol=1e-6, atol=1e-6)


def test_head_refuses_inputs_of_another_shape():
    head = PooledLinearCpu(nn.Linear(8, 2), "fc", 2)
    with pytest.raises(CompileError, match=r"expected a non-empty input \[N, 8, H, W\]"):
        head(torch.randn(1, 4, 3, 3))
    with pytest.raises(CompileError, match="got \\(1, 8, 3\\)"):
        head(torch.randn(1, 8, 3))
    with pytest.raises(CompileError, match="non-empty"):
        head(torch.randn(1, 8, 0, 3))


class Head(nn.Module):
    def __init__(self, flatten: str = "method", size=1, share: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(size)
        self.fc = nn.Linear(8 if size in (1, (1, 1)) else 32, 4)
        self.flatten, self.share = flatten, share

    def forward(self, x):
        y = self.pool(self.conv(x))
        y = y.flatten(1) if self.flatten == "method" else torch.flatten(y, 1)
        out = self.fc(y)
        return (out, y) if self.share else out


@pytest.mark.parametrize(
    "model, fused",
    [
        (Head("method"), True),
        (Head("function", size=(1, 1)), True),
        (Head(size=2), False),  # not a global pool
        (Head(share=True), False),  # the flattened pool is also an output
    ],
)
def test_the_pass_fuses_only_a_global_pool_flatten_linear_chain(model, fused):
    gm = torch.fx.symbolic_trace(model.eval())
    names = fuse_heads(gm)
    assert names == (["fc"] if fused else [])
    x = torch.randn(2, 3, 10, 10)
    assert isinstance(gm.fc, PooledLinearCpu) == fused
    if fused:
        gm.fc.mode = "torch"  # the pass alone, no kernel built
    with torch.no_grad():
        want, got = model(x), gm(x)
    if isinstance(want, tuple):
        want, got = want[0], got[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_cxx
def test_a_compiled_classifier_runs_its_head_as_a_kernel():
    torch.manual_seed(0)
    model = Head().eval()
    comp = compile_model(model, "cpu", input_shape=(2, 3, 10, 10))
    assert isinstance(comp.module.fc, PooledLinearCpu)
    assert "flatten fused (generated head kernel)" in comp.summary()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        want = model(x)
        for _ in range(3):  # Python path, recorded, replayed
            assert (comp(x) - want).abs().max() <= 1e-5 * want.abs().max()


class Spelled(nn.Module):
    """A conv body (8 x 8 plane, 16 channels) and a head spelled one of the ways classifiers
    write a global average pool and a flatten."""

    def __init__(self, spelling: str, features: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, stride=2)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.avg = nn.AvgPool2d(8)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(features, 5)
        self.spelling = spelling

    def forward(self, x):
        y = torch.relu(self.conv(x))
        s = self.spelling
        if s == "view":  # CIFAR ResNet's: F.avg_pool2d(out, 4); out.view(out.size(0), -1)
            z = F.avg_pool2d(y, 8)
            z = z.view(z.size(0), -1)
        elif s == "reshape-shape":
            z = self.avg(y).reshape(y.shape[0], -1)
        elif s == "view-features":
            z = self.gap(y).view(-1, 16)
        elif s == "functional-adaptive":
            z = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        elif s == "mean":
            z = y.mean((2, 3))
        elif s == "mean-negative":
            z = torch.mean(y, dim=[-1, -2])
        elif s == "mean-keepdim":
            z = y.mean((2, 3), keepdim=True).flatten(1)
        elif s == "module-flatten":
            z = self.drop(self.flat(self.gap(y)))
        elif s == "squeeze":
            z = self.gap(y).squeeze(-1).squeeze(-1)
        elif s == "squeeze-all":  # squeezes the batch of 1 too: not a flatten
            z = self.gap(y).squeeze()
        elif s == "view-literal":  # only right at batch 2
            z = self.gap(y).view(2, -1)
        elif s == "overlapping":  # stride 1: not one window per plane
            z = F.avg_pool2d(y, 8, stride=1).flatten(1)
        elif s == "window":  # a 2 x 2 window on the 8 x 8 plane: 256 features, not global
            z = F.avg_pool2d(y, 2).flatten(1)
        else:
            z = torch.flatten(y.amax((2, 3)), 1)  # a max: no average pool
        return self.fc(z)


FUSED = [
    "view",
    "reshape-shape",
    "view-features",
    "functional-adaptive",
    "mean",
    "mean-negative",
    "mean-keepdim",
    "module-flatten",
    "squeeze",
]


@pytest.mark.parametrize(
    "spelling", [*FUSED, "squeeze-all", "view-literal", "overlapping", "max", "window"]
)
def test_the_heads_spellings_fuse_and_compute_the_same(spelling):
    torch.manual_seed(0)
    model = Spelled(spelling, 16 * 16 if spelling == "window" else 16).eval()
    gm = torch.fx.symbolic_trace(model)
    from edgeguard.compiler.passes import remove_identities

    remove_identities(gm)  # (the compiler's first pass: the dropout goes)
    names = fuse_heads(gm)
    fused = spelling in FUSED or spelling == "window"
    assert names == (["fc"] if fused else [])
    if fused:  # nothing of the pool and flatten left: the conv's output goes to the head
        ops = [n.op for n in gm.graph.nodes]
        assert ops == ["placeholder", "call_module", "call_function", "call_module", "output"]
        gm.fc.mode = "torch"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


@needs_cxx
@pytest.mark.parametrize("spelling", ["view", "mean", "squeeze", "window"])
def test_a_compiled_model_replays_through_each_spelling_of_its_head(spelling):
    torch.manual_seed(1)
    model = Spelled(spelling, 16 * 16 if spelling == "window" else 16).eval()
    with torch.no_grad():
        model.conv.weight[:, :, 0] = 0.0  # pruned: the conv is a kernel
    shape = (2, 3, 16, 16)
    comp = compile_model(model, "cpu", input_shape=shape)
    assert isinstance(comp.module.fc, PooledLinearCpu)
    x = torch.randn(shape)
    with torch.no_grad():
        want = model(x)
        for _ in range(3):
            torch.testing.assert_close(comp(x), want, rtol=1e-4, atol=1e-5)
    # a window that is the whole plane runs the kernel and chains; one that is not, PyTorch's ops
    assert bool(comp._replayer.chains) == (spelling != "window")
