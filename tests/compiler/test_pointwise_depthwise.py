"""The fused 1x1 + depthwise kernel (a MobileNet block's expand conv, its activation, TF's SAME
pad and the depthwise conv in one pass) against PyTorch's ops on the original layers, and the pass
that finds such chains: what it fuses, what it leaves alone."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import CompileError, compile_model
from edgeguard.compiler.bench import benchmark
from edgeguard.compiler.depthwise import DepthwiseConvCpu
from edgeguard.compiler.onnx_export import export_onnx
from edgeguard.compiler.pointwise_depthwise import PointwiseDepthwiseCpu

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


def _pair(c: int, f: int, k: int, s: int, density: float, seed: int):
    torch.manual_seed(seed)
    pw, dw = nn.Conv2d(c, f, 1), nn.Conv2d(f, f, k, s, groups=f)
    with torch.no_grad():
        pw.weight *= (torch.rand_like(pw.weight) < density).float()
    return pw, dw


def _reference(pw, dw, x, act, scale, pads, relu):
    """The block as PyTorch runs it, with the TF graph's spelling of hard-swish."""
    y = pw(x)
    if act == "relu":
        y = F.relu(y)
    elif act == "hard_swish":
        y = (y * scale) * F.relu6(y + 3.0)
    y = dw(F.pad(y, pads))
    return F.relu(y) if relu else y


@needs_cxx
@pytest.mark.parametrize(
    ("c", "f", "k", "s", "pads", "size", "density"),
    [
        (16, 64, 3, 2, (0, 1, 0, 1), (33, 70), 0.3),  # CenterNet's stride-2 block, odd height
        (6, 10, 5, 1, (2, 2, 2, 2), (9, 21), 1.0),  # unpruned, filters not a multiple of 4
        (8, 8, 3, 1, (1, 1, 1, 1), (3, 4), 0.5),  # a plane narrower than a vector
        (5, 7, 5, 2, (1, 2, 2, 1), (40, 17), 0.0),  # every weight pruned: the bias alone
        (4, 12, 3, 1, (0, 0, 0, 0), (64, 64), 0.4),  # several bands, no padding
    ],
)
@pytest.mark.parametrize(("act", "relu"), [("none", False), ("relu", True), ("hard_swish", True)])
def test_fused_kernel_equals_the_two_convs(c, f, k, s, pads, size, density, act, relu):
    pw, dw = _pair(c, f, k, s, density, seed=c * 31 + k)
    x = torch.randn(2, c, *size)
    with torch.no_grad():
        want = _reference(pw, dw, x, act, 0.1666, pads, relu)
    fused = PointwiseDepthwiseCpu(pw, dw, act=act, act_scale=0.1666, pads=pads, relu=relu)
    got = fused(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())
    again = fused(x * 2)  # a second call of another input: nothing left over from the first
    with torch.no_grad():
        assert torch.allclose(again, _reference(pw, dw, x * 2, act, 0.1666, pads, relu), atol=1e-4)


def test_layers_the_kernel_cannot_take_are_refused():
    pw, dw = _pair(4, 8, 3, 1, 1.0, 0)
    with pytest.raises(CompileError, match="1x1, stride 1"):
        PointwiseDepthwiseCpu(nn.Conv2d(4, 8, 3), dw)
    with pytest.raises(CompileError, match="depthwise with one filter per channel"):
        PointwiseDepthwiseCpu(pw, nn.Conv2d(8, 16, 3, groups=8))
    with pytest.raises(CompileError, match="gives 8 channels"):
        PointwiseDepthwiseCpu(pw, nn.Conv2d(6, 6, 3, groups=6))
    with pytest.raises(CompileError, match="act must be one of"):
        PointwiseDepthwiseCpu(pw, dw, act="gelu")


class Block(nn.Module):
    """A MobileNetV3 block as TF.js graphs hold it: 1x1 expand, activation, TF SAME pad, stride-2
    depthwise conv, ReLU, 1x1 project; ``tap``: the expanded tensor also leaves the block."""

    def __init__(self, act: str = "relu", cin: int = 8, mid: int = 32, tap: bool = False):
        super().__init__()
        self.act, self.tap = act, tap
        self.expand = nn.Conv2d(cin, mid, 1)
        self.dw = nn.Conv2d(mid, mid, 3, 2, groups=mid)
        self.project = nn.Conv2d(mid, 16, 1)

    def forward(self, x):
        e = self.expand(x)
        y = F.relu(e) if self.act == "relu" else (e * 0.1666) * F.relu6(e + 3.0)
        out = self.project(F.relu(self.dw(F.pad(y, (0, 1, 0, 1)))))
        return (out, y.mean()) if self.tap else out


@needs_cxx
@pytest.mark.parametrize("act", ["relu", "hard_swish"])
def test_compile_fuses_the_expand_conv_into_the_depthwise_kernel(act):
    torch.manual_seed(1)
    model = Block(act).eval()
    with torch.no_grad():
        model.expand.weight *= (torch.rand_like(model.expand.weight) < 0.3).float()
    x = torch.randn(1, 8, 40, 40)
    want = model(x)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape))
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    fused = compiled.module.dw
    assert isinstance(fused, PointwiseDepthwiseCpu)
    assert (fused.act, fused.pads, fused.relu) == (act, (0, 1, 0, 1), True)
    assert not hasattr(compiled.module, "expand")  # its weights live in the fused module
    code = compiled.module.code
    assert "pad" not in code and "relu" not in code and "hard_swish" not in code
    by = {d.name: d for d in compiled.decisions}
    assert by["expand"].action == "sparse" and "fused with depthwise dw" in by["expand"].detail
    assert abs(by["expand"].density - float((model.expand.weight != 0).float().mean())) < 1e-6
    assert by["dw"].action == "depthwise" and "fused with the 1x1 conv expand" in by["dw"].detail
    # the standard-operator path (ONNX export) computes the same
    assert isinstance(compile_model(model, "torch").module.dw, nn.Conv2d)  # no kernel there


@needs_cxx
def test_per_layer_benchmark_times_the_fused_pair_against_both_dense_layers():
    model = Block().eval()
    compiled = compile_model(model, "cpu", input_shape=(1, 8, 40, 40))
    res = benchmark(model, compiled, (1, 8, 40, 40), repeats=2)
    (row,) = [t for t in res.layers if t.covers]
    assert row.name == "expand" and row.covers == ("expand", "dw")
    assert row.dense_ms > 0 and row.compiled_ms > 0
    assert "dw" not in {t.name for t in res.layers}  # not timed a second time on its own


@needs_cxx
@pytest.mark.parametrize(
    ("model", "why"),
    [
        (Block(tap=True), "the expanded tensor has another user"),
        (Block(cin=48, mid=32), "a 1x1 that reduces channels"),
    ],
)
def test_chains_whose_expanded_tensor_is_needed_or_small_are_left_apart(model, why):
    model = model.eval()
    x = torch.randn(1, model.expand.in_channels, 40, 40)  # (a 20-wide output: wide enough)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape))
    assert isinstance(compiled.module.dw, DepthwiseConvCpu), why
    for g, w in zip(
        compiled(x) if model.tap else [compiled(x)],
        model(x) if model.tap else [model(x)],
        strict=True,
    ):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


@needs_cxx
def test_pairs_whose_depthwise_output_is_narrower_than_a_vector_stay_apart():
    # the fused kernel vectorises along the output rows: a 16-float vector over an 8-wide row
    # leaves half its lanes empty, and the two kernels apart ran faster there
    from edgeguard.compiler.cpu import host_target

    vl = host_target().vector_floats
    model = Block().eval()
    narrow, wide = (1, 8, vl, vl), (1, 8, 4 * vl, 4 * vl)  # outputs vl / 2 and 2 * vl wide
    for shapes, fused in [
        (narrow, False),
        (wide, True),
        ([wide, narrow], False),  # every declared shape must fill the vectors
        (None, True),  # no shape declared: nothing known, fused as before
    ]:
        compiled = compile_model(model, "cpu", input_shape=shapes)
        assert isinstance(compiled.module.dw, PointwiseDepthwiseCpu) == fused, shapes
        by = {d.name: d for d in compiled.decisions}
        assert ("fused with depthwise dw" in by["expand"].detail) == fused
        for shape in [narrow, wide]:
            x = torch.randn(shape)
            assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@needs_cxx
def test_onnx_export_of_a_fused_block_equals_the_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = Block().eval()
    x = torch.randn(1, 8, 40, 40)
    compiled = compile_model(model, "cpu", input_shape=tuple(x.shape))
    assert isinstance(compiled.module.dw, PointwiseDepthwiseCpu)
    path = export_onnx(compiled, tmp_path / "block.onnx", tuple(x.shape))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


@needs_cxx
def test_the_kernel_at_avx2_and_neon_vector_width_equals_too():
    # 8-float vectors: 2 vectors per tile at most (16 registers); built here with the host's flags
    from edgeguard.compiler.cpu import build_many, host_target

    pw, dw = _pair(12, 20, 3, 2, 0.5, seed=3)
    x = torch.randn(1, 12, 29, 33)  # 16 outputs a row: 2 vectors
    with torch.no_grad():
        want = _reference(pw, dw, x, "relu", 1.0, (0, 1, 0, 1), True)
    fused = PointwiseDepthwiseCpu(pw, dw, act="relu", pads=(0, 1, 0, 1), relu=True)
    src, _ = fused.source(x, 8)
    assert "VL = 8" in src and "NT = 2" in src
    (lib,) = build_many([src], host_target())
    fused.load_kernel(fused.kernel_key(tuple(x.shape)), lib)
    assert torch.allclose(fused(x), want, rtol=1e-5, atol=1e-5)
