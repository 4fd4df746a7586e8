"""Unit- and pixel-level promotion/suppression: exactness, completeness, categories, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.attacks import PGD
from edgeguard.explain import (
    CATEGORIES,
    ExplainError,
    categorize,
    pixel_pse,
    suppression_share,
    unit_pse,
)


@pytest.fixture(scope="module")
def attacked(digits_model, digits_batch):
    x, y = digits_batch[0][:40], digits_batch[1][:40]
    xa = PGD(eps=0.15, steps=20)(digits_model, x, y)
    with torch.no_grad():
        ok = digits_model(xa).argmax(1) != y
    assert ok.sum() >= 20
    return x[ok], xa[ok], y[ok]


def test_exact_split_of_a_gap_linear_head_is_exact_to_float_precision(digits_model, attacked):
    model = digits_model.double()
    try:
        x, xa, y = (v.double() if v.is_floating_point() else v for v in attacked)
        pse = unit_pse(model, x, xa, y)
        assert pse.method == "exact" and pse.layer == "fc"
        assert pse.promotion.shape == (len(x), 128)
        assert pse.completeness_error().max() < 1e-12
        # the recorded logit changes are the model's own
        with torch.no_grad():
            dz = model(xa) - model(x)
        assert torch.equal(pse.delta_true, dz.gather(1, y[:, None]).squeeze(1))
    finally:
        digits_model.float()


def test_conductance_split_at_an_early_layer_is_complete_within_one_percent(digits_model, attacked):
    x, xa, y = attacked
    pse = unit_pse(digits_model, x, xa, y, layer="features.1", steps=32)
    assert pse.method == "conductance" and pse.promotion.shape == (len(x), 32)
    assert pse.completeness_error().max() < 0.01
    with pytest.raises(ExplainError, match="final nn.Linear"):
        unit_pse(digits_model, x, xa, y, layer="features.1", method="exact")


def test_bad_layer_name_lists_the_valid_ones(digits_model, attacked):
    x, xa, y = attacked
    with pytest.raises(ExplainError, match=r"no layer named 'conv9'.*features\.0.*fc"):
        unit_pse(digits_model, x, xa, y, layer="conv9")


def test_failed_attacks_are_rejected_not_averaged_in(digits_model, attacked):
    x, _, y = attacked
    with pytest.raises(ExplainError, match="failed attacks"):
        unit_pse(digits_model, x, x.clone(), y)  # no perturbation: adversarial class == label
    with pytest.raises(ExplainError, match="differ in shape"):
        unit_pse(digits_model, x, x[:3], y)


def test_categories_hand_worked():
    p = torch.tensor([1.0, 1.0, 3.0, -1.0, 0.0, 2.0])
    s = torch.tensor([3.0, 1.0, 1.0, 2.0, 0.0, -0.5])
    share = suppression_share(p, s)
    assert torch.allclose(share[:5].nan_to_num(-1), torch.tensor([0.75, 0.5, 0.25, 1.0, -1.0]))
    assert categorize(share) == [
        "suppression-dominated",
        "balanced",
        "promotion-dominated",
        "suppression-dominated",
        "none",
        "promotion-dominated",
    ]
    assert categorize(share, 0.8, 0.2)[0] == "balanced"
    with pytest.raises(ExplainError, match="thresholds"):
        categorize(share, 0.3, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=1, max_size=20),
    st.floats(0.01, 0.49),
)
def test_share_is_a_fraction_and_categories_follow_it(pairs, lo):
    p, s = (torch.tensor(v, dtype=torch.float64) for v in zip(*pairs, strict=True))
    share = suppression_share(p, s)
    cats = categorize(share, 1 - lo, lo)
    for v, c, pi, si in zip(share.tolist(), cats, p.tolist(), s.tolist(), strict=True):
        if pi <= 0 and si <= 0:
            assert c == "none"
            continue
        assert 0 <= v <= 1 and c in CATEGORIES
        assert (c == "suppression-dominated") == (v >= 1 - lo)


def test_pixel_maps_are_nonnegative_and_complete(digits_model, attacked):
    x, xa, y = attacked
    px = pixel_pse(digits_model, x, xa, y, steps=32)
    assert px.promotion.shape == (len(x), 8, 8) and (px.promotion >= 0).all()
    assert (px.suppression >= 0).all()
    with torch.no_grad():
        dz = digits_model(xa) - digits_model(x)
    t = digits_model(xa).argmax(1)
    d_true = dz.gather(1, y[:, None]).squeeze(1)
    d_adv = dz.gather(1, t[:, None]).squeeze(1)
    scale = float(dz.abs().max())
    assert torch.allclose(px.ig_true.flatten(1).sum(1), d_true, atol=0.01 * scale)
    assert torch.allclose(px.ig_adv.flatten(1).sum(1), d_adv, atol=0.01 * scale)
