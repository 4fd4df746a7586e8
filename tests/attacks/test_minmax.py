"""Min-max ensemble attack: simplex projection, weights move to the harder model, worst case at least
as good as average weighting."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.attacks import PGD, AttackError, Ensemble, MinMaxPGD, MinMaxWeights, project_simplex
from edgeguard.data import digits
from edgeguard.defenses import adversarial_training
from edgeguard.engine import TrainConfig, seed_everything
from edgeguard.models import build


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6))
def test_simplex_projection_is_the_nearest_point_of_the_simplex(values):
    w = torch.tensor([values], dtype=torch.float64)
    p = project_simplex(w)
    assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-9
    # optimality: no other simplex point (random samples) is closer
    others = torch.distributions.Dirichlet(torch.ones(w.shape[1], dtype=torch.float64)).sample(
        (200,)
    )
    assert ((others - w).norm(dim=1) >= (p - w).norm() - 1e-9).all()


@pytest.fixture(scope="module")
def robust_model():
    seed_everything(1)
    model = build("digits_cnn")
    adversarial_training(
        model,
        digits(True),
        None,
        PGD(eps=0.15, steps=5, seed=None),
        TrainConfig(epochs=5, lr=3e-3, progress=False),
    )
    return model.eval()


def test_minmax_weights_move_to_the_harder_model(digits_model, digits_batch, robust_model):
    x, y = digits_batch
    x, y = x[:100], y[:100]
    ens = Ensemble([digits_model, robust_model])
    avg = MinMaxPGD(eps=0.15, steps=40, weighting="average").run(ens, x, y)
    mm = MinMaxPGD(eps=0.15, steps=40, weighting="minmax", beta=0.5, gamma=0.5).run(ens, x, y)
    assert float(mm.weights[:, 1].mean()) > 0.6  # the adversarially trained model
    assert torch.allclose(avg.weights, torch.full_like(avg.weights, 0.5))
    # success = every model fooled: on this pair the two weightings tie within a sample or two,
    # which one wins changes with the CPU's float rounding; the check is that min-max keeps it
    assert mm.success_rate >= avg.success_rate - 0.02
    assert mm.fooled.shape == (100, 2)


def test_minmax_rejects_bad_settings(digits_model):
    with pytest.raises(AttackError, match="at least 2 models"):
        Ensemble([digits_model])
    with pytest.raises(AttackError, match="weighting must be"):
        MinMaxPGD(weighting="max")
    with pytest.raises(AttackError, match="attacks an Ensemble"):
        MinMaxPGD().run(digits_model, torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long))


def test_minmax_weights_move_to_the_larger_loss_and_average_stays_uniform():
    mm = MinMaxWeights(2, "minmax", beta=0.5, gamma=1.0)
    loss = mm(torch.tensor([1.0, 0.2]))
    assert float(loss) == pytest.approx(0.5 * 1.0 + 0.5 * 0.2)
    # ascent step w + 0.5 * (L - 1 * (w - 1/2)) = (1.0, 0.6), projected onto the simplex: (0.7, 0.3)
    assert torch.allclose(mm.weights, torch.tensor([0.7, 0.3]))
    # ascending a given quantity instead: the loss is still sum w L, the step follows (0.1, 0.9)
    alt = MinMaxWeights(2, "minmax", beta=0.5, gamma=1.0)
    loss = alt(torch.tensor([1.0, 0.2]), ascend=torch.tensor([0.1, 0.9]))
    assert float(loss) == pytest.approx(0.6)
    # w + 0.5 * (a - 0) = (0.55, 0.95), projected: (0.3, 0.7)
    assert torch.allclose(alt.weights, torch.tensor([0.3, 0.7]))
    with pytest.raises(AttackError, match=r"need \[2\] losses"):
        alt(torch.tensor([1.0, 0.2, 0.3]))
    avg = MinMaxWeights(2, "average")
    avg(torch.tensor([1.0, 0.2]))
    assert torch.equal(avg.weights, torch.tensor([0.5, 0.5]))
    with pytest.raises(AttackError, match="weighting"):
        MinMaxWeights(2, "max")
