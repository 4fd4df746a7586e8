"""Graphs off the beaten path (issue 25): a module called twice in a forward (each call keeps its
own output; shrinking, BN folding and ReLU fusion leave shared modules whole) and BatchNorm without
running statistics after dead filters."""

import shutil

import pytest
import torch
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.sparsity import get_scheme

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(x[:, :, :8]) - self.conv(x[:, :, 8:])


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(4, 16, 1)

    def forward(self, x):
        return self.a(torch.relu(self.a(self.b(x))))


def _pruned(model: nn.Module, scheme: str, rate: float) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels >= 16:
                m.weight *= get_scheme(scheme).mask(m.weight, rate)
    return model.eval()


@needs_cxx
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("scheme", ["kgs", "filter"])
@pytest.mark.parametrize("make", [Siamese, Twice])
def test_a_module_called_twice_gives_the_masked_result(make, scheme, backend):
    torch.manual_seed(1)
    model = _pruned(make(), scheme, 0.5)
    x = torch.randn(2, 4, 16, 12)
    want = model(x)
    compiled = compile_model(model, backend, max_density=1.0)
    for _ in range(2):  # buffers kept from the first call must not leak into the second
        got = compiled(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())


class BatchStatsBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16, track_running_stats=False)
        self.head = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_cxx)])
def test_batchnorm_without_running_stats_after_dead_filters(backend):
    torch.manual_seed(2)
    model = _pruned(BatchStatsBN(), "filter", 0.5)
    x = torch.randn(3, 4, 10, 10)
    want = model(x)
    got = compile_model(model, backend, max_density=1.0)(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())


@needs_cxx
def test_new_input_sizes_are_built_at_once_and_logged(caplog):
    torch.manual_seed(3)
    model = _pruned(Twice(), "kgs", 0.5)
    compiled = compile_model(
        model, "cpu", input_shape=[(1, 4, 8, 8), (2, 4, 8, 8)], max_density=1.0
    )
    assert compiled._built == {(1, 4, 8, 8), (2, 4, 8, 8)}
    with caplog.at_level("INFO", logger="edgeguard.compiler"):
        x = torch.randn(1, 4, 6, 10)
        assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-5)
        compiled(x)  # built once
    said = [r.getMessage() for r in caplog.records if "(1, 4, 6, 10)" in r.getMessage()]
    assert len(said) == 2 and "new size" in said[0] and "layers in" in said[1], said


class PaddedAfterDeadFilters(nn.Module):
    """Filter-pruned conv (its dead filters still emit their bias) feeding a conv whose padding is
    not zeros: the removed channels' contribution must be padded as the model pads them."""

    def __init__(self, padding, padding_mode: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 3, padding=padding, padding_mode=padding_mode)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@needs_cxx
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize(
    "padding, mode",
    [(1, "reflect"), (1, "replicate"), (1, "circular"), ("same", "reflect"), ("same", "zeros")],
)
def test_padding_modes_after_filter_pruning(padding, mode, backend):
    torch.manual_seed(2)
    model = PaddedAfterDeadFilters(padding, mode)
    with torch.no_grad():
        model.a.bias.uniform_(0.2, 0.5)  # dead filters output a positive constant through ReLU
    model = _pruned(model, "filter", 0.5)
    x = torch.randn(2, 4, 10, 9)
    want = model(x)
    compiled = compile_model(model, backend, max_density=1.0)
    got = compiled(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())
    rows = {d.name: d for d in compiled.decisions}
    # after shrinking b has nothing pruned: the torch backend keeps it dense, cpu runs it sparse
    assert rows["b"].action == ("sparse" if backend == "cpu" else "dense"), rows["b"]
    if backend == "cpu" and mode != "zeros":  # the padding as its own op, then the sparse conv
        assert f"{mode} padding as a separate op" in rows["b"].detail
    else:  # "same" with an odd kernel is symmetric: compiled like padding=1
        assert "separate op" not in rows["b"].detail


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_cxx)])
def test_same_padding_that_pads_unevenly_is_padded_by_a_separate_op(backend):
    # torch pads one side more (kernel 2: 0 before, 1 after): the kernels read symmetric zeros only
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 2, padding="same"), nn.ReLU()).eval()
    _pruned(model, "kgs", 0.5)
    x = torch.randn(1, 4, 9, 8)
    compiled = compile_model(model, backend, max_density=1.0)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    row = compiled.decisions[0]
    assert row.action == "sparse" and "constant padding as a separate op" in row.detail


def test_errors_name_the_users_2d_shapes():
    torch.manual_seed(0)
    model = _pruned(nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.Conv2d(16, 16, 3)), "kgs", 0.5)
    compiled = compile_model(model, "torch", max_density=1.0)
    with pytest.raises(ValueError, match=r"expected input \[N, 4, H, W\], got \(1, 3, 8, 8\)"):
        compiled(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"input \(1, 16, 2, 2\) is too small for kernel \(3, 3\)"):
        compiled(torch.randn(1, 4, 2, 2))


class FunctionalRelus(nn.Module):
    """ReLUs as TF.js graphs hold them: ``F.relu`` calls, which torch.fx records with
    ``inplace=False``, and an in-place one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return nn.functional.relu(self.b(nn.functional.relu(self.a(x), inplace=True)))


@needs_cxx
def test_functional_relus_fuse_into_their_sparse_convs():
    torch.manual_seed(2)
    model = _pruned(FunctionalRelus(), "kgs", 0.5)
    x = torch.randn(2, 4, 8, 8)
    want = model(x)
    compiled = compile_model(model, "cpu", max_density=1.0)
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    assert [m.relu for m in (compiled.module.a, compiled.module.b)] == [True, True]
    assert "relu" not in compiled.module.code
