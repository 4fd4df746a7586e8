"""The sums left after residual fusion and shrinking's added-back fields run as generated kernels
(compiler/eltwise.py, passes/sums.py), so that a filter-pruned ResNet with BatchNorm shifts still
replays as one native call; other sums stay PyTorch ops."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.eltwise import AddCpu, FieldAddCpu
from edgeguard.models import build
from edgeguard.sparsity import prune_model

from .helpers import mask_convs, poison_pools

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


def _shifted(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and shifts away from the identity (a trained model's): a removed
    filter then outputs a non-zero constant, which shrinking adds back as a field."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
    return model.eval()


@needs_cxx
@pytest.mark.parametrize("batch", [1, 3])
def test_a_filter_pruned_resnet_with_bn_shifts_replays_as_one_native_call(batch):
    torch.manual_seed(0)
    model = _shifted(build("resnet18_cifar", num_classes=10, width=0.25))
    prune_model(model, "filter", 0.5)
    shape = (batch, 3, 16, 16)
    comp = compile_model(model, "cpu", input_shape=shape)
    mods = list(comp.module.modules())
    assert any(isinstance(m, FieldAddCpu) for m in mods)  # removed channels' fields
    assert any(isinstance(m, AddCpu) and m.relu for m in mods)  # block sums after a field
    xs = [torch.randn(shape) for _ in range(3)]
    with torch.no_grad():
        for i, x in enumerate([*xs, xs[0]]):
            assert poison_pools(comp) >= 0
            got, want = comp(x), model(x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            if i == 1:
                assert comp._replayer.chains  # recorded: the later calls are one native call


class Sums(nn.Module):
    """A sum of two conv outputs read again later (so no conv takes it in) with a ReLU, one that
    broadcasts, one with a scalar, an in-place sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        s = torch.relu(a + b)  # -> AddCpu(relu): a and b are outputs too
        t = s + s.mean((2, 3), keepdim=True)  # broadcasts: PyTorch's op at call time
        u = self.c(t) + 1.0  # a scalar: left as it is
        u += u  # in place, its left operand read by no one else: a sum too
        return u, a, b


@needs_cxx
def test_tensor_sums_become_kernels_and_the_others_stay():
    torch.manual_seed(1)
    model = mask_convs(Sums().eval(), "kgs", 0.5)
    comp = compile_model(model, "cpu", max_density=1.0)
    sums = [m for m in comp.module.modules() if isinstance(m, AddCpu)]
    assert len(sums) == 3 and sum(m.relu for m in sums) == 1
    assert "relu" not in comp.module.code
    assert "(c, 1.0)" in comp.module.code  # the scalar sum: a PyTorch op (into c)
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        for _ in range(3):
            for g, w in zip(comp(x), model(x), strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_a_sum_falls_back_to_pytorch_where_its_operands_do_not_fit():
    add = AddCpu("s", relu=True)
    a, b = torch.randn(2, 4, 3), torch.randn(1, 4, 1)
    torch.testing.assert_close(add(a, b), torch.relu(a + b))  # broadcast: no kernel built
    torch.testing.assert_close(add(torch.tensor(2.0), torch.tensor(-3.0)), torch.tensor(0.0))
    assert not add._kernels


@needs_cxx
def test_a_filter_pruned_model_with_fields_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edgeguard.compiler.onnx_export import export_onnx

    torch.manual_seed(2)
    model = _shifted(build("resnet18_cifar", num_classes=10, width=0.25))
    prune_model(model, "filter", 0.5)
    shape = (2, 3, 16, 16)
    comp = compile_model(model, "cpu", input_shape=shape)
    path = tmp_path / "m.onnx"
    export_onnx(comp, path, shape)
    x = torch.randn(shape)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)
