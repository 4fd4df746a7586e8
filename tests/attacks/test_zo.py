"""Zeroth-order estimators against a known gradient, the black-box wrapper, and the ZO attacks."""

import pytest
import torch

from edgeguard.attacks.zo import (
    ZOO,
    BlackBox,
    BlackBoxError,
    ZOAdam,
    ZOSignSGD,
    coordinate_estimate,
    random_estimate,
)


def quadratic():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 50, generator=g) / 7
    b = torch.randn(30, generator=g)

    def f(x):  # [N, 50] -> [N], smooth, gradient 2 A^T (A x - b)
        r = x @ a.T - b
        return (r * r).sum(1)

    def grad(x):
        return 2 * (x @ a.T - b) @ a

    return f, grad


@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
def test_random_estimates_align_with_the_gradient_as_q_grows(kind):
    f, grad = quadratic()
    x = torch.randn(64, 50, generator=torch.Generator().manual_seed(1))
    true = grad(x)
    cos = []
    for q in (1, 10, 100):
        est, spent = random_estimate(f, x, q, 1e-3, kind, torch.Generator().manual_seed(2))
        assert spent == q + 1
        cos.append(float(torch.nn.functional.cosine_similarity(est, true, dim=1).mean()))
    assert cos[0] < cos[1] < cos[2]
    # theory: E[cos] ~ sqrt(q / d) for q << d (d = 50): q = 10 gives about 0.45
    assert 0.25 < cos[1] < 0.7 and cos[2] > 0.75


def test_coordinate_estimate_is_exact_on_its_coordinates():
    f, grad = quadratic()
    x = torch.randn(4, 50)
    coords = torch.stack([torch.randperm(50)[:10] for _ in range(4)])
    est, spent = coordinate_estimate(f, x, coords, 1e-3)
    true = grad(x)
    assert spent == 20
    assert torch.allclose(est.gather(1, coords), true.gather(1, coords), rtol=1e-2, atol=1e-2)
    mask = torch.ones_like(est, dtype=torch.bool).scatter_(1, coords, False)
    assert (est[mask] == 0).all()


def test_black_box_refuses_gradients_and_counts_queries(digits_model, digits_batch):
    x, _ = digits_batch
    bb = BlackBox(digits_model)
    out = bb(x[:5])
    assert bb.queries == 5 and torch.allclose(out.sum(1), torch.ones(5))
    assert not out.requires_grad and list(bb.parameters()) == []
    with pytest.raises(BlackBoxError, match="outputs only"):
        bb(x[:2].clone().requires_grad_(True))
    with pytest.raises(RuntimeError):
        out.sum().backward()


@pytest.mark.parametrize(
    "attack",
    [
        ZOSignSGD(eps=0.2, lr=0.02, q=20, max_queries=1000),
        ZOAdam(eps=0.2, lr=0.02, q=20, max_queries=1000),
        ZOO(eps=0.2, lr=0.2, batch_coords=16, max_queries=1000),
    ],
    ids=lambda a: a.name,
)
def test_zo_attacks_fool_the_digits_model_within_budget(digits_model, digits_batch, attack):
    x, y = digits_batch
    x, y = x[:40], y[:40]
    res = attack.run(digits_model, x, y)
    assert res.success_rate >= 0.7, res.success_rate
    assert res.distortion["linf"].max() <= attack.eps + 1e-6
    assert res.queries.max() <= attack.max_queries + 2 * 16 + 21
    assert res.queries[res.success].float().mean() < attack.max_queries
