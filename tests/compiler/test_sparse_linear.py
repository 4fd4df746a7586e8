"""SparseLinear (a pruned Linear run as a 1x1x1 sparse conv over the batch) against nn.Linear."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import SparseLinear, compile_model
from edgeguard.sparsity import get_scheme

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
MODES = ["torch", pytest.param("cpu", marks=needs_cxx)]


def pruned_linear(cin=40, cout=24, scheme="kgs", rate=0.7, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(cin, cout)
    with torch.no_grad():
        if scheme == "random":  # unstructured: every output keeps its own inputs
            lin.weight *= torch.rand(lin.weight.shape) > rate
        else:
            lin.weight *= get_scheme(scheme).mask(lin.weight, rate)
    return lin


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", ["kgs", "vanilla", "random"])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_sparse_linear_matches_dense(mode, scheme, lead):
    lin = pruned_linear(scheme=scheme)
    x = torch.randn(*lead, 40)
    for relu in (False, True):
        sl = SparseLinear.from_linear(lin, relu=relu, mode=mode)
        y, ref = sl(x), lin(x)
        ref = F.relu(ref) if relu else ref
        assert y.shape == ref.shape
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_cxx
def test_sparse_linear_output_survives_the_next_call():
    # the kernel's output buffer is reused between calls: what a call returned must not change
    sl = SparseLinear.from_linear(pruned_linear(), mode="cpu")
    sl.conv.reuse_buffers = True
    a, b = torch.randn(1, 40), torch.randn(1, 40)
    ya = sl(a)
    keep = ya.clone()
    sl(b)
    assert torch.equal(ya, keep)


def test_sparse_linear_rejects_bad_input():
    sl = SparseLinear.from_linear(pruned_linear())
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 40\] input"):
        sl(torch.randn(2, 39))
    with pytest.raises(ValueError, match="out_features, in_features"):
        SparseLinear(torch.randn(3, 4, 5))


@needs_cxx
def test_compiled_model_runs_pruned_fc_layers_sparse_on_the_cpu(monkeypatch):
    from edgeguard.compiler.passes import lowering

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 48),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(48, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()
    with torch.no_grad():
        for i in (0, 3):
            net[i].weight *= get_scheme("kgs").mask(net[i].weight, 0.7)
    comp = compile_model(net, "cpu")  # layers this small stay dense by default
    assert [d.action for d in comp.decisions] == ["dense"] * 3
    assert "too small to pay off" in comp.decisions[0].detail
    monkeypatch.setattr(lowering, "LINEAR_MIN_WEIGHTS", 0)
    comp = compile_model(net, "cpu")
    acts = {d.name: d.action for d in comp.decisions}
    assert acts == {"0": "sparse", "3": "sparse", "5": "dense"}  # the classifier is unpruned
    assert sum(isinstance(m, SparseLinear) for m in comp.module.modules()) == 2
    x = torch.randn(3, 64)
    assert torch.allclose(comp(x), net(x), atol=1e-5)
    # a layer denser than max_density stays dense
    comp = compile_model(net, "cpu", max_density=0.2)
    assert {d.name: d.action for d in comp.decisions}["0"] == "dense"


@needs_cxx
def test_compiled_sparse_fc_exports_to_onnx_with_a_dynamic_batch(tmp_path, monkeypatch):
    from edgeguard.compiler.passes import lowering

    monkeypatch.setattr(lowering, "LINEAR_MIN_WEIGHTS", 0)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edgeguard.compiler.onnx_export import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 6 * 6, 64),
        nn.ReLU(),
        nn.Linear(64, 5),
    ).eval()
    with torch.no_grad():
        net[3].weight *= get_scheme("kgs").mask(net[3].weight, 0.7)
    comp = compile_model(net, "cpu")
    assert {d.name: d.action for d in comp.decisions}["3"] == "sparse"
    session = ort.InferenceSession(str(export_onnx(comp, tmp_path / "m.onnx", (1, 3, 4, 6, 6))))
    for n in (1, 3):  # exported at batch 1, run at 1 and 3
        x = torch.randn(n, 3, 4, 6, 6)
        ref = net(x).detach()
        out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
