"""Every pruner and every scheme on a MobileNetV3-like graph (depthwise convs, squeeze-excite, hard-swish,
residual adds, concatenation, a channel shuffle, a sigmoid): regularise -> hard prune -> fine-tune
on a label-free loss (matching the dense model's output), the depthwise convs left dense and
reported, the pruned model compiled to the same function."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from edgeguard.compiler import compile_model
from edgeguard.engine import TrainConfig
from edgeguard.masks import masks_of
from edgeguard.prune import available_pruners, get_pruner, run_pruning
from tests.sparsity.test_channel_graph import SHAPE, _net

SCHEMES = ["kgs", "vanilla", "filter", "column", "channel"]


def _case(method: str, scheme: str):
    dense = _net()
    images = TensorDataset(torch.randn(8, *SHAPE[1:]), torch.zeros(8, dtype=torch.long))

    def loss_fn(net, x, _y):  # label-free: the dense model's output is the target
        with torch.no_grad():
            target = dense(x)
        return (net(x) - target).pow(2).mean()

    def score(net) -> float:
        x = torch.randn(4, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return float(-(net(x) - dense(x)).pow(2).mean())

    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, progress=False)
    pruner = get_pruner(method, scheme)
    reg = None if method == "magnitude" else cfg
    out = run_pruning(
        copy.deepcopy(dense),
        pruner,
        images,
        None,
        SHAPE,
        rates=0.5,
        regularize=reg,
        finetune=cfg,
        loss_fn=loss_fn,
        score=score,
    )
    return out


# every method with KGS, every scheme with magnitude (the product ran in 24 s)
CASES = [(m, "kgs") for m in sorted(set(available_pruners()) - {"primal-proximal"})] + [
    ("magnitude", s) for s in SCHEMES if s != "kgs"
]


@pytest.mark.parametrize(("method", "scheme"), CASES)
def test_every_pruner_and_scheme_prunes_a_mobilenet_graph(method, scheme):
    out = _case(method, scheme)
    masked = set(masks_of(out.model))
    assert masked and not masked & {"b1.dw", "b2.dw"}  # depthwise convs stay dense
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in out.history)
    x = torch.randn(SHAPE)
    out.model.eval()  # BatchNorm with its running statistics, as compiled
    compiled = compile_model(out.model, "torch", max_density=1.0)
    with torch.no_grad():
        want = out.model(x)
    assert torch.allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    assert {d.action for d in compiled.decisions if d.name in ("b1.dw", "b2.dw")} == {"unsupported"}


@pytest.mark.slow  # 10 s: its threshold search; test_primal_proximal covers the method itself
def test_primal_proximal_picks_its_own_rates_on_a_mobilenet_graph():
    out = _case("primal-proximal", None)
    assert masks_of(out.model) and out.flops.reduction > 1.0
