from __future__ import annotations

import pytest
import torch

from edgeguard.data import digits
from edgeguard.engine import TrainConfig
from edgeguard.masks import mask_of
from edgeguard.models import build, count_flops
from edgeguard.prune import PrimalProximalPruner, get_pruner, run_pruning
from edgeguard.prune.primal_proximal import dykstra_prox, group_soft_threshold
from edgeguard.sparsity import SparsityError, get_scheme


def test_group_soft_threshold_hand_example():
    # two filters of a 2x2 Linear: norms 5 and 0.5; threshold 1 -> first shrinks to norm 4, second zero
    z = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = group_soft_threshold(z, get_scheme("filter"), 1.0, torch.ones(2))
    assert torch.allclose(out, torch.tensor([[2.4, 3.2], [0.0, 0.0]]))
    # min_keep=1 caps the threshold so that no unit is removed
    kept = group_soft_threshold(z, get_scheme("filter"), 1.0, torch.ones(2), min_keep=1.0)
    assert (kept.abs().sum(1) > 0).all()


def prox_objective(x, v, t, schemes):
    value = 0.5 * (x - v).square().sum()
    for s in schemes:
        value = value + t * s.unit_norms(x).sum()
    return value


def test_dykstra_gives_the_prox_of_the_sum_of_overlapping_group_penalties():
    torch.manual_seed(0)
    v = torch.randn(6, 4, 3)
    schemes = [get_scheme("filter"), get_scheme("column")]
    weights = [torch.ones(6), torch.ones(12)]
    t = 0.6
    x = dykstra_prox(v, schemes, t, weights, iters=200)
    # independent reference: minimise the (convex) prox objective directly
    ref = v.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    for _ in range(4000):
        opt.zero_grad()
        prox_objective(ref, v, t, schemes).backward()
        opt.step()
    ours = prox_objective(x, v, t, schemes).item()
    best = prox_objective(ref.detach(), v, t, schemes).item()
    assert ours <= best + 1e-3 * abs(best)
    one_pass = dykstra_prox(v, schemes, t, weights, iters=1)
    assert ours <= prox_objective(one_pass, v, t, schemes).item() + 1e-6


def test_budget_is_met_with_rates_chosen_per_layer():
    torch.manual_seed(0)
    model = build("digits_cnn")
    shape = (1, 1, 8, 8)
    reg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, progress=False)
    ft = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False)
    pruner = get_pruner("primal-proximal", ramp_epochs=1)
    res = run_pruning(
        model,
        pruner,
        digits(True),
        digits(False),
        shape,
        flops_reduction=3.0,
        regularize=reg,
        finetune=ft,
    )
    assert 3.0 <= res.flops.reduction < 3.3
    assert len(set(round(r, 3) for r in res.rates.values())) > 1  # not one uniform rate
    assert [h["pp_budget_reduction"] for h in res.regularize_history] == pytest.approx([3.0, 3.0])
    for name in res.rates:  # min_keep: every layer keeps some rows and columns
        assert mask_of(dict(res.model.named_modules())[name]).any()
    assert count_flops(res.model, shape).kept_macs == res.flops.kept_macs


def test_bad_options():
    for opts, match in [
        ({"rho": 0}, "rho"),
        ({"min_keep": 0}, "min_keep"),
        ({"dykstra_iters": 0}, "dykstra_iters"),
        ({"flops_exponent": -1}, "flops_exponent"),
        ({"ramp_epochs": -1}, "ramp_epochs"),
    ]:
        with pytest.raises(SparsityError, match=match):
            PrimalProximalPruner(**opts)
    with pytest.raises(SparsityError, match="unknown sparsity scheme 'rows'"):
        PrimalProximalPruner("rows+column")
    assert PrimalProximalPruner("kgs", gm=4, gn=2).schemes[0].options() == {"gm": 4, "gn": 2}
