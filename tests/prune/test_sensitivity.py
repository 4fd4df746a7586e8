"""Output-level sensitivity and the greedy rate allocation: a hand-worked allocation, the curve's
interpolation, the table against a direct computation, and bad input."""

import copy

import pytest
import torch
from torch import nn

from edgeguard.prune.sensitivity import _curve, allocate_rates, layer_sensitivity
from edgeguard.sparsity import SparsityError, prune_model


def test_curve_is_linear_between_rates_and_extends_the_last_slope():
    row = {0.2: 1.0, 0.4: 3.0}
    assert _curve(row, 0.0) == 0.0
    assert _curve(row, 0.1) == pytest.approx(0.5)
    assert _curve(row, 0.3) == pytest.approx(2.0)
    assert _curve(row, 0.5) == pytest.approx(4.0)  # slope 10 past 0.4


def test_allocation_takes_the_cheapest_macs_first_up_to_the_cap():
    flat = {0.2: 0.1, 0.4: 0.2, 0.6: 0.3, 0.8: 0.4}  # 0.5 per unit rate
    steep = {0.2: 0.4, 0.4: 0.8, 0.6: 1.2, 0.8: 1.6}  # 2 per unit rate
    sens, macs = {"a": flat, "b": steep}, {"a": 100.0, "b": 100.0}
    assert allocate_rates(sens, macs, 60, max_rate=0.7, step=0.1) == pytest.approx(
        {"a": 0.6, "b": 0.0}
    )
    # the cap stops "a" at 0.7; the rest goes to "b"
    assert allocate_rates(sens, macs, 80, max_rate=0.7, step=0.1) == pytest.approx(
        {"a": 0.7, "b": 0.1}
    )
    # per MAC: a large layer with the steeper curve can be the cheaper one
    assert allocate_rates(sens, {"a": 10.0, "b": 1000.0}, 100, step=0.1) == pytest.approx(
        {"a": 0.0, "b": 0.1}
    )


def test_allocation_refuses_bad_input():
    sens = {"a": {0.5: 1.0}}
    with pytest.raises(SparsityError, match="needs more than max_rate 0.7"):
        allocate_rates(sens, {"a": 100.0}, 80)
    # a cap off the step grid: the steps reach 0.6 of 0.65, so 62 of 100 MACs is out of reach
    with pytest.raises(SparsityError, match="needs more than max_rate 0.65"):
        allocate_rates(sens, {"a": 100.0}, 62, max_rate=0.65, step=0.2)
    assert allocate_rates(sens, {"a": 100.0}, 60, max_rate=0.65, step=0.2) == {"a": 0.6}
    with pytest.raises(SparsityError, match="no MAC count for layers"):
        allocate_rates(sens, {}, 10)
    with pytest.raises(SparsityError, match="need 0 < step <= max_rate < 1"):
        allocate_rates(sens, {"a": 100.0}, 10, max_rate=1.0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
    ).eval()


def test_layer_sensitivity_matches_pruning_each_layer_alone():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        dense = model(x)

    def loss(net):
        return float((net(x) - dense).pow(2).mean())

    table = layer_sensitivity(model, "filter", ["0", "2"], loss, rates=(0.25, 0.5))
    for name in ("0", "2"):
        for rate in (0.25, 0.5):
            net = copy.deepcopy(model)
            prune_model(net, "filter", rates={name: rate}, layers=[name])
            with torch.no_grad():
                assert table[name][rate] == pytest.approx(loss(net), rel=1e-6)
        assert 0 < table[name][0.25] < table[name][0.5]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    # re-solved on the inputs it is measured on, the last layer's error can only fall
    solved = layer_sensitivity(model, "filter", ["2"], loss, rates=(0.5,), calibration=[(x,)])
    assert solved["2"][0.5] < table["2"][0.5]


def test_layer_sensitivity_refuses_bad_rates_and_no_layers():
    model = _model()
    with pytest.raises(SparsityError, match=r"rates must lie in \(0, 1\)"):
        layer_sensitivity(model, "filter", ["0"], lambda n: 0.0, rates=(0.0, 0.5))
    with pytest.raises(SparsityError, match="at least one layer"):
        layer_sensitivity(model, "filter", [], lambda n: 0.0)
    with pytest.raises(SparsityError, match="the loss of 0 at rate 0.5 is nan"):
        layer_sensitivity(model, "filter", ["0"], lambda n: float("nan"), rates=(0.5,))
