"""What a compiled model promises besides speed: non-finite inputs give what the model gives, outputs
are never shared with the next call, errors name the compile-time shape, inference only."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.errors import CompileError
from edgeguard.sparsity import prune_model

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return y, {"mean": y.mean((2, 3))}


def _pruned(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TwoHeads()
    prune_model(model, "kgs", rates=0.5)
    return model.eval()


@needs_cxx
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_propagate_as_in_the_model(backend, bad):
    model = _pruned()
    compiled = compile_model(model, backend, input_shape=(2, 3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    x[0, 1, 4, 5] = bad
    with torch.no_grad():
        ref, _ = model(x)
    out, _ = compiled(x)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(ref).any()
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert torch.allclose(out[finite], ref[finite], atol=1e-5)
    assert torch.isfinite(ref[1]).all() and torch.isfinite(out[1]).all()  # the other sample


@needs_cxx
def test_tuple_and_dict_outputs_are_not_overwritten_by_the_next_call():
    model = _pruned()
    compiled = compile_model(model, "cpu", input_shape=(1, 3, 12, 12))
    x1, x2 = torch.randn(1, 3, 12, 12), torch.randn(1, 3, 12, 12)
    y1, d1 = compiled(x1)
    keep = (y1.clone(), d1["mean"].clone())
    compiled(x2)
    assert torch.equal(y1, keep[0]) and torch.equal(d1["mean"], keep[1])
    with torch.no_grad():
        assert torch.allclose(y1, model(x1)[0], atol=1e-5)


@needs_cxx
def test_errors_name_the_compile_time_shape_and_inference_only():
    compiled = compile_model(_pruned(), "cpu", input_shape=(1, 3, 12, 12))
    with pytest.raises(
        CompileError,
        match=r"input \(1, 4, 12, 12\) does not fit this model "
        r"\(compiled for input \(1, 3, 12, 12\)\).*expected input \[N, 3, H, W\]",
    ):
        compiled(torch.randn(1, 4, 12, 12))
    with pytest.raises(CompileError, match="inference-only"):
        compiled(torch.randn(1, 3, 12, 12, requires_grad=True))


def test_the_finite_check_sums_once_and_is_exact_when_the_sum_overflows():
    from edgeguard.compiler.model import _finite

    assert _finite(torch.full((4,), 3e38))  # finite values whose sum overflows to inf
    assert _finite(torch.arange(5))  # integers are always finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not _finite(torch.tensor([1.0, bad, 2.0]))
    assert not _finite(torch.tensor([float("inf"), -float("inf")]))  # sums to NaN
