from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgeguard.data import digits
from edgeguard.engine import TrainConfig, fit
from edgeguard.models import build
from edgeguard.prune import ADMMPruner, ReweightedPruner, available_pruners, get_pruner, run_pruning
from edgeguard.sparsity import SparsityError, get_masks, get_scheme

SHAPE = (1, 1, 8, 8)
QUICK = TrainConfig(epochs=1, batch_size=64, lr=2e-3, progress=False)


@pytest.fixture(scope="module")
def dense(digits_model):
    """The session's trained digits CNN (conftest), copied: pruning here must not touch it."""
    return copy.deepcopy(digits_model).train()


def test_registry():
    assert {"magnitude", "reweighted", "admm"} <= set(available_pruners())
    with pytest.raises(SparsityError, match="unknown pruning method 'l1'"):
        get_pruner("l1")
    with pytest.raises(SparsityError, match="takes no setting"):
        get_pruner("reweighted", rho=1.0)


@pytest.mark.parametrize("scheme", ["filter", "column", "kgs"])
def test_reweighted_penalty_gradient_is_the_analytic_one(scheme):
    torch.manual_seed(0)
    model = build("c3d", num_classes=3, width=0.125, clip_size=[16, 16, 16])
    pruner = ReweightedPruner(scheme, lam=0.3, eps=1e-2)
    pruner.setup(model, {"conv2": 0.5, "fc6": 0.5})
    model.zero_grad()
    pruner.penalty(model).backward()
    sch = get_scheme(scheme)
    for name in ("conv2", "fc6"):
        w = dict(model.named_modules())[name].weight
        lay = sch.layout(w.shape)
        alpha = 1.0 / (sch.unit_sq_norms(w.detach()) + 1e-2)
        expected = 2 * 0.3 * lay.expand(alpha) * w.detach()
        assert w.grad is not None and torch.allclose(w.grad, expected, rtol=1e-5, atol=1e-8)
    # penalty value: lam * sum_u alpha_u ||W_u||^2
    value = pruner.penalty(model).item()
    ref = sum(
        (1 / (sch.unit_sq_norms(m.weight.detach()) + 1e-2) * sch.unit_sq_norms(m.weight.detach()))
        .sum()
        .item()
        for m in (model.conv2, model.fc6)
    )
    assert value == pytest.approx(0.3 * ref, rel=1e-5)


def test_reweighting_schedule():
    model = build("digits_cnn")
    pruner = ReweightedPruner("filter", lam=1e-3, reweight_every=2)
    pruner.setup(model, {"features.2": 0.5})
    before = pruner.alpha["features.2"].clone()
    with torch.no_grad():
        model.features[2].weight.mul_(2)
    pruner.on_epoch_end(0, model, {})
    assert torch.equal(pruner.alpha["features.2"], before)  # not yet
    pruner.on_epoch_end(1, model, {})
    assert not torch.equal(pruner.alpha["features.2"], before)


def test_admm_updates_follow_the_algorithm():
    torch.manual_seed(0)
    model = build("digits_cnn")
    pruner = ADMMPruner("kgs", rho=0.5, rho_growth=2.0, rho_max=1.5, gm=4, gn=4)
    pruner.setup(model, {"features.2": 0.5})
    w = model.features[2].weight
    sch = get_scheme("kgs", gm=4, gn=4)
    assert torch.equal(pruner.Z["features.2"], sch.project(w.detach(), 0.5))
    # penalty gradient: rho * (W - Z + U)
    model.zero_grad()
    pruner.penalty(model).backward()
    assert torch.allclose(w.grad, 0.5 * (w.detach() - pruner.Z["features.2"]))
    with torch.no_grad():
        w.add_(0.01 * torch.randn_like(w))
    u_old = pruner.U["features.2"].clone()
    pruner.on_epoch_end(0, model, {})
    z = pruner.Z["features.2"]
    assert torch.equal(z, sch.project(w.detach() + u_old, 0.5))
    assert torch.allclose(pruner.U["features.2"], u_old + w.detach() - z)
    assert pruner.rho == 1.0
    pruner.on_epoch_end(1, model, {})
    assert pruner.rho == 1.5  # capped by rho_max


@pytest.mark.parametrize(
    ("method", "options"),
    [("magnitude", {}), ("reweighted", {"lam": 1e-4}), ("admm", {"rho": 1e-2})],
)
@pytest.mark.parametrize("scheme", ["filter", "kgs"])
def test_pipeline_meets_the_target_with_structured_masks(dense, method, options, scheme):
    pruner = (
        get_pruner(method, scheme, gm=4, gn=4, **options)
        if scheme == "kgs"
        else get_pruner(method, scheme, **options)
    )
    reg = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False)
    res = run_pruning(
        dense,
        pruner,
        digits(True),
        digits(False),
        SHAPE,
        flops_reduction=2.0,
        regularize=reg,
        finetune=QUICK,
    )
    assert res.flops.reduction >= 2.0
    assert res.accuracy_dense > 0.9
    assert res.accuracy_finetuned > 0.5
    for name, mask in get_masks(res.model).items():
        assert pruner.scheme.is_structured(mask)
        assert not dict(res.model.named_modules())[name].weight[~mask].any()
    assert (len(res.regularize_history) == 1) == (method != "magnitude")


def test_bad_settings_fail_before_training(dense):
    for method, opts, match in [
        ("reweighted", {"lam": 0}, "lam"),
        ("reweighted", {"lam": -1.0}, "lam"),
        ("reweighted", {"eps": 0}, "eps"),
        ("admm", {"rho": 0}, "rho"),
        ("admm", {"rho": float("inf")}, "finite"),
    ]:
        with pytest.raises(SparsityError, match=match):
            get_pruner(method, "kgs", **opts)
    with pytest.raises(SparsityError, match="out of reach"):
        run_pruning(
            dense,
            get_pruner("reweighted", "filter"),
            digits(True),
            digits(False),
            SHAPE,
            flops_reduction=50.0,
            layers=["features.0"],
        )
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        run_pruning(dense, "magnitude", digits(True), digits(False), SHAPE, rates=1.0)


def test_interrupted_pipeline_resumes_from_its_stages(dense, tmp_path: Path, monkeypatch):
    reg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, progress=False)
    import edgeguard.engine.train as train_module

    real_save = train_module.save_checkpoint
    calls = {"n": 0}

    def crash_in_finetune(state, path):
        real_save(state, path)
        calls["n"] += 1
        if "finetune" in str(path):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", crash_in_finetune)
    job = {
        "model": dense,
        "pruner": get_pruner("admm", "filter", rho=1e-2),
        "train_set": digits(True),
        "val_set": digits(False),
        "input_shape": SHAPE,
        "flops_reduction": 2.0,
        "regularize": reg,
        "finetune": TrainConfig(epochs=2, batch_size=64, progress=False),
        "workdir": tmp_path,
    }
    with pytest.raises(KeyboardInterrupt):
        run_pruning(**job)
    assert (tmp_path / "pruned.safetensors").is_file() and (
        tmp_path / "regularize/last.pt"
    ).is_file()
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    res = run_pruning(**job, resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2]  # epoch 1 came from the checkpoint
    assert res.flops.reduction >= 2.0


@pytest.mark.parametrize(
    "method", ["magnitude", "reweighted", "admm", "primal-proximal", "gradual"]
)
@pytest.mark.parametrize("scheme", ["filter", "channel", "column", "vanilla", "kgs"])
def test_every_method_with_every_scheme_on_conv3d_and_linear(method, scheme):
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = build("c3d", num_classes=3, width=0.125, clip_size=[16, 16, 16])
    data = TensorDataset(torch.rand(12, 3, 16, 16, 16), torch.randint(0, 3, (12,)))
    cfg = TrainConfig(epochs=1, batch_size=6, lr=1e-3, progress=False)
    pruner = get_pruner(method, scheme)
    res = run_pruning(
        model,
        pruner,
        data,
        data,
        (1, 3, 16, 16, 16),
        rates={"conv3a": 0.5, "fc6": 0.5},
        regularize=cfg,
        finetune=cfg,
    )
    masks = get_masks(res.model)
    assert set(masks) == {"conv3a", "fc6"}  # one Conv3d and one Linear layer
    for mask in masks.values():
        assert pruner.scheme.is_structured(mask) and not mask.all()
    assert res.flops.reduction > 1.0


def test_gradual_pruning_raises_the_rates_along_the_cubic_schedule(dense):
    from edgeguard.masks import masks_of

    pruner = get_pruner("gradual", "filter", ramp_epochs=3)
    assert [round(pruner.share(e), 4) for e in range(5)] == [0.0, 0.7037, 0.963, 1.0, 1.0]
    shares = []

    def removed(epoch, model, metrics):
        m = masks_of(model)["features.2"]
        shares.append(round(1 - float(m.flatten(1).any(1).float().mean()), 3))

    net = copy.deepcopy(dense)
    pruner.setup(net, {"features.2": 0.5})
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, progress=False)
    fit(
        net,
        digits(True),
        None,
        cfg,
        penalty=pruner.penalty,
        callbacks=[pruner.on_epoch_end, removed],
    )
    n = dict(net.named_modules())["features.2"].weight.shape[0]
    want = [round(round(0.5 * pruner.share(e) * n) / n, 3) for e in (1, 2, 3)]
    assert shares == want  # filters removed after each epoch: 0.5 x the schedule
    for bad in ({"ramp_epochs": 0}, {"exponent": 0}):
        with pytest.raises(SparsityError):
            get_pruner("gradual", "filter", **bad)
