"""FGSM and PGD: behaviour, bad input, and success rates against torchattacks (the peer)."""

import pytest
import torch

from edgeguard.attacks import CW, EAD, FGSM, PGD, AttackError, Normalize, get_attack


def test_fgsm_and_pgd_stay_in_the_ball_and_the_image_range(digits_model, digits_batch):
    x, y = digits_batch
    x0 = x.clone()
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=10), PGD(eps=0.5, steps=10, norm="l2")):
        res = attack.run(digits_model, x, y)
        assert torch.equal(x, x0), "attacks never modify the caller's tensors"
        assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
        norm = attack.norm
        assert res.distortion[norm].max() <= attack.eps + 1e-5
        assert res.success.dtype == torch.bool and res.success.shape == y.shape
        with torch.no_grad():
            pred = digits_model(res.adversarial).argmax(1)
        assert torch.equal(res.success, pred != y)


def test_pgd_is_stronger_than_fgsm_and_grows_with_eps(digits_model, digits_batch):
    x, y = digits_batch
    fgsm = FGSM(eps=0.1).run(digits_model, x, y).success_rate
    pgd = PGD(eps=0.1, steps=20).run(digits_model, x, y).success_rate
    pgd_big = PGD(eps=0.2, steps=20).run(digits_model, x, y).success_rate
    assert pgd >= fgsm and pgd_big >= pgd and pgd_big > 0.5


def test_targeted_pgd_reaches_the_target(digits_model, digits_batch):
    x, y = digits_batch
    target = (y + 1) % 10
    res = PGD(eps=0.3, steps=40).run(digits_model, x, y, target=target)
    with torch.no_grad():
        pred = digits_model(res.adversarial).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success_rate > 0.5


def test_restarts_never_hurt(digits_model, digits_batch):
    x, y = digits_batch
    one = PGD(eps=0.08, steps=5, restarts=1).run(digits_model, x, y)
    three = PGD(eps=0.08, steps=5, restarts=3).run(digits_model, x, y)
    assert three.success_rate >= one.success_rate
    assert (three.queries == 18).all() and (one.queries == 6).all()


def test_normalize_wrapper_attacks_in_pixel_space(digits_model, digits_batch):
    x, y = digits_batch
    mean, std = [0.3], [0.4]

    class Inner(torch.nn.Module):  # expects normalised inputs
        def forward(self, z):
            return digits_model(z * 0.4 + 0.3)

    wrapped = Normalize(Inner().eval(), mean, std)
    a = PGD(eps=0.1, steps=10).run(wrapped, x, y)
    b = PGD(eps=0.1, steps=10).run(digits_model, x, y)
    assert torch.allclose(a.adversarial, b.adversarial, atol=1e-5)


def test_bad_input_is_rejected_clearly(digits_model, digits_batch):
    x, y = digits_batch
    with pytest.raises(AttackError, match="eps must be a finite number >= 0"):
        PGD(eps=-0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(AttackError, match="eps must be a finite number"):
            PGD(eps=bad)
    x_nan = x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(AttackError, match="inputs holds 1 NaN and 0 infinite"):
        PGD()(digits_model, x_nan, y)
    with pytest.raises(AttackError, match="steps must be an integer >= 1"):
        PGD(steps=0)
    with pytest.raises(AttackError, match=r"images in \[0, 1\]"):
        PGD()(digits_model, x * 2, y)
    with pytest.raises(AttackError, match=r"labels must be in \[0, 9\]"):
        PGD()(digits_model, x, y + 10)
    with pytest.raises(AttackError, match=r"expected \[200\]"):
        PGD()(digits_model, x, y[:5])
    with pytest.raises(AttackError, match="unknown norm 'l1'"):
        PGD(norm="l1")
    with pytest.raises(AttackError, match="unknown attack 'deepfool'"):
        get_attack("deepfool")
    digits_model.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            FGSM(eps=0.1)(digits_model, x, y)
        assert digits_model.training  # mode restored
    finally:
        digits_model.eval()


@pytest.mark.parametrize("attack", [FGSM(eps=0.1), PGD(eps=0.1, steps=3), CW(steps=3)])
def test_attacks_never_change_the_model_state(attack, digits_batch):
    """A train-mode model with BatchNorm: no forward pass of the attack (the input checks included)
    may move its running statistics or its parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(144, 10),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits_batch
    with pytest.warns(UserWarning, match="training mode"):
        attack(model, x[:16], y[:16])
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


torchattacks = pytest.importorskip(
    "torchattacks", reason="torchattacks is not installed (make venv)"
)


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_success_rates_match_torchattacks(digits_model, digits_batch, eps):
    x, y = digits_batch
    ours = FGSM(eps=eps).run(digits_model, x, y).success_rate
    adv = torchattacks.FGSM(digits_model, eps=eps)(x, y)
    with torch.no_grad():
        theirs = float((digits_model(adv).argmax(1) != y).float().mean())
    assert abs(ours - theirs) <= 0.02, (ours, theirs)
    alpha = eps / 4
    ours = PGD(eps=eps, alpha=alpha, steps=10, random_start=True).run(digits_model, x, y)
    torch.manual_seed(0)
    adv = torchattacks.PGD(digits_model, eps=eps, alpha=alpha, steps=10, random_start=True)(x, y)
    with torch.no_grad():
        theirs = float((digits_model(adv).argmax(1) != y).float().mean())
    assert abs(ours.success_rate - theirs) <= 0.02, (ours.success_rate, theirs)


def test_cw_binary_search_finds_smaller_perturbations(digits_model, digits_batch):
    x, y = digits_batch
    x, y = x[:60], y[:60]
    one = CW(c=10.0, steps=100, binary_steps=1, abort_early=False).run(digits_model, x, y)
    search = CW(c=10.0, steps=100, binary_steps=4, abort_early=False).run(digits_model, x, y)
    assert search.success_rate >= one.success_rate - 1e-9 and search.success_rate > 0.8
    both = one.success & search.success
    assert search.distortion["l2"][both].mean() <= one.distortion["l2"][both].mean() + 1e-6


@pytest.mark.parametrize("solver", ["ista", pytest.param("fista", marks=pytest.mark.slow)])
def test_ead_gives_sparser_perturbations_than_cw(digits_model, digits_batch, solver):
    x, y = digits_batch
    x, y = x[:60], y[:60]
    ead = EAD(c=10.0, beta=0.05, steps=100, lr=0.05, binary_steps=3, solver=solver).run(
        digits_model, x, y
    )
    cw = CW(c=10.0, steps=100, binary_steps=3, abort_early=False).run(digits_model, x, y)
    assert ead.success_rate > 0.8
    both = ead.success & cw.success
    assert ead.distortion["l1"][both].mean() < cw.distortion["l1"][both].mean()
    with pytest.raises(AttackError, match="solver must be 'ista' or 'fista'"):
        EAD(solver="adam")


def test_cw_success_rate_matches_torchattacks(digits_model, digits_batch):
    ta = pytest.importorskip("torchattacks")
    x, y = digits_batch
    ours = CW(c=1.0, kappa=0.0, steps=50, lr=0.01, binary_steps=1, abort_early=False)
    rate = ours.run(digits_model, x, y).success_rate
    adv = ta.CW(digits_model, c=1.0, kappa=0.0, steps=50, lr=0.01)(x, y)
    with torch.no_grad():
        theirs = float((digits_model(adv).argmax(1) != y).float().mean())
    assert abs(rate - theirs) <= 0.05, (rate, theirs)
