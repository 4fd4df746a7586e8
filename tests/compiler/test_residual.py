"""A residual sum after a sparse conv (``relu(conv(x) + r)``) is added by the conv's kernel: the
compiled model equals the masked one on plain and batch-last kernels, with dead filters, with a
residual that broadcasts, without its residual, and in the ONNX export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import CompileError, SparseConv, compile_model, plan_conv
from edgeguard.compiler.onnx_export import export_onnx
from edgeguard.sparsity import get_scheme

from .test_kernels import needs_cxx


class Block(nn.Module):
    """A ResNet basic block with a strided 1 x 1 shortcut, and a sum with a per-channel tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, 2, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.shortcut = nn.Conv2d(8, 16, 1, 2)
        self.head = nn.Conv2d(16, 16, 3, 1, 1)
        self.offset = nn.Parameter(torch.randn(1, 16, 1, 1))

    def forward(self, x):
        y = F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))
        return self.head(y) + self.offset  # broadcasts: added after a kernel without it


def masked_block(seed: int = 0, dead: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = Block().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight *= get_scheme("kgs", gm=4, gn=4).mask(m.weight, 0.6)
                m.bias.uniform_(-0.5, 0.5)
        if dead:  # filters with no weight left: their output is bias + residual
            model.conv2.weight[:5] = 0
            model.head.weight[3:9] = 0
    return model


@needs_cxx
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dead", [False, True])
def test_fused_residual_equals_the_masked_model(batch, dead):
    model = masked_block(dead=dead)
    x = torch.randn(batch, 8, 12, 12)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape), max_density=1.0)
    gm = compiled.module
    assert gm.conv2.residual and gm.conv2.relu and gm.head.residual and not gm.head.relu
    assert "relu" not in gm.code  # both ReLUs went into kernels
    with torch.no_grad():
        want, want2 = model(x), model(-x)
    first = compiled(x)
    kept = first.clone()
    second = compiled(-x)
    assert (first - want).abs().max() <= 1e-4 * want.abs().max()
    assert (second - want2).abs().max() <= 1e-4 * want2.abs().max()
    assert torch.equal(first, kept)


@needs_cxx
def test_a_residual_layer_called_alone_adds_nothing():
    model = masked_block(dead=True)  # its dead filters' planes are the bias (plus the residual)
    compiled = compile_model(model, "cpu", max_density=1.0)
    conv2 = compiled.module.conv2
    h = torch.randn(2, 16, 6, 6)
    r = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        want = F.relu(model.conv2(h))
        for _ in range(2):  # the second calls take the kept call, on the 4-D tensors as they are
            assert torch.allclose(conv2(h), want, atol=1e-5)
            assert torch.allclose(conv2(h, r), F.relu(model.conv2(h) + r), atol=1e-5)
    with pytest.raises(CompileError, match="takes no residual"):
        compiled.module.conv1(torch.randn(2, 8, 12, 12), r)
    with pytest.raises(CompileError, match=r"residual \(2, 16, 5, 6\) does not broadcast"):
        conv2(h, torch.randn(2, 16, 5, 6))


def test_the_torch_backend_keeps_the_sum_in_the_graph():
    compiled = compile_model(masked_block(), "torch", max_density=1.0)
    assert not any(m.residual for m in compiled.module.modules() if isinstance(m, SparseConv))


@needs_cxx
def test_onnx_export_of_fused_residuals_equals_the_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = masked_block(dead=True)
    x = torch.randn(2, 8, 12, 12)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape), max_density=1.0)
    path = export_onnx(compiled, tmp_path / "block.onnx", tuple(x.shape))
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x)
    assert (torch.from_numpy(got) - want).abs().max() <= 1e-4 * want.abs().max()


@needs_cxx
@pytest.mark.parametrize("no_avx512", ["", "1"])
@pytest.mark.parametrize("mr, nv", [(8, 2), (4, 3), (8, 1)])
@pytest.mark.parametrize("width", [9, 21, 33])
def test_residual_at_every_store_path(monkeypatch, no_avx512, mr, nv, width):
    # whole vectors, tiles crossing row ends (masked stores or the copy without AVX-512) and
    # extra positions all add the residual before the ReLU
    monkeypatch.setenv("EDGEGUARD_NO_AVX512", no_avx512)
    torch.manual_seed(width)
    conv = nn.Conv2d(16, 24, 3, 1, 1)
    with torch.no_grad():
        conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
    sc = SparseConv(plan_conv(conv, mr=mr), two_d=True, mode="cpu", relu=True, nv=nv)
    sc.residual = True
    x, r = torch.randn(2, 16, 7, width), torch.randn(2, 24, 7, width)
    with torch.no_grad():
        want = F.relu(conv(x) + r)
        got = sc(x, r)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


class Blocks(nn.Module):
    """Two identity blocks; ``keep``: the first block's input is also returned (read after the
    second block's conv, so that conv must not write over it)."""

    def __init__(self, keep: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.keep = keep

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(self.a2(F.relu(self.a1(s))) + s)
        z = F.relu(self.b2(F.relu(self.b1(y))) + y)
        return (z, s) if self.keep else z


@needs_cxx
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
def test_a_residual_read_by_nothing_after_takes_the_output(keep, batch):
    torch.manual_seed(0)
    model = Blocks(keep).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight *= get_scheme("kgs", gm=4, gn=4).mask(m.weight, 0.5)
    x = torch.randn(batch, 3, 12, 12)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape), max_density=1.0)
    gm = compiled.module
    assert gm.b2.residual_into  # y: read by b1 before, by nothing after
    assert gm.a2.residual_into is not keep  # s is returned too: read after a2
    with torch.no_grad():
        for scale in (1.0, -2.0):
            want, got = model(x * scale), compiled(x * scale)
            for w, g in zip(want if keep else [want], got if keep else [got], strict=True):
                assert (g - w).abs().max() <= 1e-4 * w.abs().max()


@needs_cxx
def test_a_residual_given_by_the_caller_is_never_written():
    model = masked_block()
    compiled = compile_model(model, "cpu", input_shape=(2, 8, 12, 12), max_density=1.0)
    conv2 = compiled.module.conv2
    h, r = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    kept = r.clone()
    with torch.no_grad():
        for _ in range(2):
            conv2(h, r)
    assert torch.equal(r, kept)
