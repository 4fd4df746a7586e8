"""The two standard-operator forms of a sparse conv (gather, conv) and which one ONNX export writes."""

import shutil

import pytest
import torch
from torch import nn

from edgeguard.compiler import CompileError, SparseConv, compile_model, plan_conv
from edgeguard.compiler.sparse_conv import GATHER_MAX_DENSITY
from edgeguard.sparsity import get_scheme, prune_model


def masked_conv(conv: nn.Module, scheme: str, rate: float) -> nn.Module:
    with torch.no_grad():
        conv.weight *= get_scheme(scheme).mask(conv.weight, rate)
    return conv


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize("scheme", ["kgs", "column", "vanilla"])
def test_both_forms_equal_the_dense_conv_and_auto_follows_the_kept_channels(two_d, scheme):
    torch.manual_seed(0)
    if two_d:
        conv = masked_conv(nn.Conv2d(12, 16, 3, (2, 1), (1, 2), (1, 2)), scheme, 0.85)
        x = torch.randn(2, 12, 9, 10)
        sc = SparseConv(plan_conv(conv, mr=8), relu=True, two_d=True)
    else:
        conv = masked_conv(nn.Conv3d(12, 16, 3, (1, 2, 1), 1), scheme, 0.85)
        x = torch.randn(2, 12, 5, 9, 10)
        sc = SparseConv(plan_conv(conv, mr=8), relu=True)
    ref = conv(x).relu().detach()
    weight = conv.weight.detach()
    assert torch.equal(sc.conv_weight().view_as(weight), weight)
    for form in ("gather", "conv"):
        sc.form = form
        assert sc.standard_form() == form
        assert (sc(x) - ref).abs().max() <= 1e-5 * ref.abs().max(), form
    # column pruning drops (channel, location) rows for every filter: the gather form multiplies
    # only the kept rows; kernel groups and single weights leave nearly every row kept by someone
    sc.form = "auto"
    assert sc.standard_form() == ("gather" if sc.gather_density <= GATHER_MAX_DENSITY else "conv")
    if scheme != "vanilla":
        assert sc.standard_form() == {"column": "gather", "kgs": "conv"}[scheme], sc.gather_density
    sc.form = "im2col"
    with pytest.raises(CompileError, match=r"form must be one of \('auto', 'gather', 'conv'\)"):
        sc(x)


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("scheme,op", [("kgs", "Conv"), ("column", "MatMul")])
def test_export_writes_the_auto_form_and_onnx_runtime_equals_the_masked_model(tmp_path, scheme, op):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgeguard.compiler.onnx_export import ExportError, export_onnx

    torch.manual_seed(0)
    model = TwoConvs().eval()
    prune_model(model, scheme, rates=0.85)
    comp = compile_model(model, "torch")
    assert len(comp.sparse_layers()) == 2
    shape = (2, 3, 12, 12)
    x = torch.randn(*shape)
    n_gather = sum(m.standard_form() == "gather" for m in comp.sparse_layers().values())
    assert (n_gather > 0) == (op == "MatMul")  # column pruning keeps few channels per location
    for form in ("auto", "gather", "conv"):
        path = export_onnx(comp, tmp_path / f"{form}.onnx", shape, form=form)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        gathers = {"auto": n_gather, "gather": 2, "conv": 0}[form]
        assert (ops.count("MatMul"), ops.count("Conv")) == (gathers, 2 - gathers), (form, ops)
        assert not {"ScatterND", "Where", "Expand"} & set(ops), ops  # weights are constants
        out = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x)
        assert (torch.from_numpy(out) - ref).abs().max() <= 1e-5 * ref.abs().max(), form
    assert all(m.form == "auto" for m in comp.sparse_layers().values())  # restored
    with pytest.raises(ExportError, match="form must be one of"):
        export_onnx(comp, tmp_path / "bad.onnx", shape, form="fast")


class ConvPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.b = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(self.pool(torch.relu(self.a(x))))


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
def test_a_2d_max_pool_exports_as_one_2d_max_pool(tmp_path):
    # the CPU pool runs a 2-D pool as a 3-D one over a depth of 1; the export must not (ONNX
    # Runtime ran VGG-16's five Unsqueeze + 3-D MaxPool + Squeeze 4-6 % slower than MaxPool)
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgeguard.compiler.onnx_export import export_onnx

    torch.manual_seed(0)
    model = ConvPool().eval()
    prune_model(model, "kgs", rates=0.6)
    shape = (2, 3, 12, 12)
    comp = compile_model(model, "cpu", input_shape=shape)
    assert any(type(m).__name__ == "MaxPoolCpu" for m in comp.module.modules())
    path = export_onnx(comp, tmp_path / "pool.onnx", shape)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MaxPool") == 1 and not {"Unsqueeze", "Squeeze"} & set(ops), ops
    (pool,) = [n for n in graph.node if n.op_type == "MaxPool"]
    kernel = next(a for a in pool.attribute if a.name == "kernel_shape")
    assert list(kernel.ints) == [2, 2]
    x = torch.randn(*shape)
    out = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    assert (torch.from_numpy(out) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_exporting_agrees_with_torch_onnx_is_in_onnx_export(monkeypatch):
    from edgeguard.compiler import calls

    assert calls.exporting() is torch.onnx.is_in_onnx_export() is False
    if calls._TS_GLOBALS is not None:  # both exporters' flags, as torch reads them
        monkeypatch.setattr(calls._TS_GLOBALS, "in_onnx_export", True)
        assert calls.exporting() and torch.onnx.is_in_onnx_export()
        monkeypatch.setattr(calls._TS_GLOBALS, "in_onnx_export", False)
        monkeypatch.setattr(calls._dynamo_flags, "_is_onnx_exporting", True)
        assert calls.exporting() and torch.onnx.is_in_onnx_export()
