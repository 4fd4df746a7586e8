"""Output-error importance (prune.importance) and the gradual pruner's ``output-error`` criterion."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeguard.data import digits
from edgeguard.engine import TrainConfig
from edgeguard.models import count_flops
from edgeguard.prune import get_pruner, run_pruning
from edgeguard.prune.importance import InputStatistics, output_error_masks, unit_output_errors
from edgeguard.sparsity import SparsityError, get_masks, get_scheme


def _scaled_inputs(n: int, scales: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, C, 6, 6]`` zero-mean inputs whose channels are independent with RMS ``scales``."""
    return torch.randn(n, len(scales), 6, 6, generator=gen) * scales.view(1, -1, 1, 1)


def test_unit_error_is_the_measured_output_change_for_independent_channels():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, bias=True)  # unpadded: every output sees every tap
    scales = torch.tensor([0.1, 0.3, 1.0, 3.0, 10.0, 1.0])
    x = _scaled_inputs(4000, scales, gen)
    stats = InputStatistics({"c": conv.train()})
    with torch.no_grad():
        y = conv(x)
    scheme = get_scheme("kgs", gm=2, gn=2)
    err = unit_output_errors(
        conv.weight, scheme, stats.input_mean_square("c"), stats.output_mean_square("c")
    )
    lay = scheme.layout(conv.weight.shape)
    y0 = (y - conv.bias.view(1, -1, 1, 1)).detach()
    for u in range(lay.num_units):  # a dense computation per unit: remove it, measure
        keep = torch.ones(lay.num_units, dtype=torch.bool)
        keep[u] = False
        w = conv.weight.detach() * scheme.mask_from_units(tuple(conv.weight.shape), keep)
        y1 = torch.nn.functional.conv2d(x, w)
        measured = float((y1 - y0).square().mean() / y0.square().mean())
        assert float(err[u]) == pytest.approx(measured, rel=0.05)
    stats.remove()
    assert not conv._forward_hooks


def test_global_ranking_removes_units_on_quiet_inputs_first_and_meets_the_budget():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    with torch.no_grad():  # large weights on quiet inputs vs small weights on loud ones
        net[0].weight.mul_(10)
    layers = {"0": net[0], "2": net[2]}
    stats = InputStatistics(layers)
    net.train()(torch.randn(64, 4, 5, 5) * 0.01)
    flops = count_flops(net, (1, 4, 5, 5))
    scheme = get_scheme("filter")
    macs = {lay.name: lay.dense_macs for lay in flops.layers}
    for remove in (0.0, macs["0"] / 8, 0.3 * flops.dense_macs):
        masks = output_error_masks(layers, scheme, stats, flops, remove)
        removed = sum(
            macs[n] * (1 - float(m.flatten(1).any(1).float().mean())) for n, m in masks.items()
        )
        assert removed >= remove - 1e-6  # the budget is met, by at most one unit more
        assert removed < remove + max(macs[n] / masks[n].shape[0] for n in masks)
        for m in masks.values():
            assert m.flatten(1).any(1).any()  # no layer emptied
    # the ranking is the cost order: the cheapest unit of all goes first
    errs = {
        n: unit_output_errors(
            layers[n].weight, scheme, stats.input_mean_square(n), stats.output_mean_square(n)
        )
        / (macs[n] / layers[n].weight.shape[0])
        for n in layers
    }
    first = min(errs, key=lambda n: float(errs[n].min()))
    masks = output_error_masks(layers, scheme, stats, flops, 1.0)
    gone = {n: (~masks[n].flatten(1).any(1)).nonzero().flatten().tolist() for n in masks}
    assert gone[first] == [int(errs[first].argmin())]
    assert sum(len(v) for v in gone.values()) == 1
    with pytest.raises(SparsityError, match="removable MMACs"):
        output_error_masks(layers, scheme, stats, flops, float(flops.dense_macs))


def test_statistics_skip_eval_calls_and_start_afresh_each_round():
    conv = nn.Conv2d(2, 2, 1)
    stats = InputStatistics({"c": conv})
    assert not stats.ready()
    conv.eval()(torch.ones(1, 2, 3, 3))
    assert not stats.ready()
    conv.train()(torch.full((1, 2, 3, 3), 2.0))
    assert torch.allclose(stats.input_mean_square("c"), torch.full((2,), 4.0))
    stats.new_round()
    assert torch.allclose(stats.input_mean_square("c"), torch.full((2,), 4.0))  # kept until a call
    conv(torch.full((1, 2, 3, 3), 3.0))
    assert torch.allclose(stats.input_mean_square("c"), torch.full((2,), 9.0))
    other = InputStatistics({"c": nn.Conv2d(2, 2, 1)})
    other.load_state_dict(stats.state_dict())
    assert torch.equal(other.input_mean_square("c"), stats.input_mean_square("c"))


def test_gradual_output_error_reaches_the_mac_target_through_run_pruning(digits_model):
    net = copy.deepcopy(digits_model)
    pruner = get_pruner("gradual", "filter", ramp_epochs=2, exponent=1.0, criterion="output-error")
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, progress=False)
    layers = ["features.2", "features.5"]
    res = run_pruning(
        net,
        pruner,
        digits(True),
        digits(False),
        (1, 1, 8, 8),
        flops_reduction=1.5,
        regularize=cfg,
        finetune=replace_epochs(cfg, 1),
        layers=layers,
    )
    assert res.flops.reduction >= 1.5
    masks = get_masks(res.model)
    assert masks and all(pruner.scheme.is_structured(m) for m in masks.values())
    # per-layer rates are chosen by the ranking, not one uniform rate
    assert [h["gradual_share"] for h in res.regularize_history] == [0.5, 1.0]
    assert res.accuracy_finetuned > 0.8
    assert not any(m._forward_hooks for m in res.model.modules())  # statistics hooks removed
    assert pruner.options()["criterion"] == "output-error"


def replace_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, epochs=epochs)


def test_gradual_output_error_bad_use():
    with pytest.raises(SparsityError, match="criterion must be one of"):
        get_pruner("gradual", "filter", criterion="taylor")
    pruner = get_pruner("gradual", "filter", criterion="output-error")
    net = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(SparsityError, match="needs the MAC budget"):
        pruner.setup(net, {"0": 0.5})
    pruner.setup(net, {"0": 0.5}, target_macs=10.0, flops=count_flops(net, (1, 1, 6, 6)))
    with pytest.raises(SparsityError, match="regularize stage"):
        pruner.final_masks(net)
