"""Integrated gradients and unit conductance against Captum and against completeness."""

import pytest
import torch
from captum.attr import IntegratedGradients, LayerConductance

from edgeguard.explain import ExplainError, integrated_gradients, quadrature, unit_conductance


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left"]
)
def test_quadrature_points_match_captum_and_weights_sum_to_one(method):
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters(method)
    a, w = quadrature(20, method)
    ref = torch.tensor(step_sizes(20), dtype=w.dtype)
    assert torch.allclose(a, torch.tensor(alphas(20), dtype=a.dtype), atol=1e-12)
    assert abs(float(w.sum()) - 1) < 1e-12
    if method == "riemann_trapezoid":
        # Captum's trapezoid steps are 1/n (ends halved) over n points spaced 1/(n-1): they sum to
        # 1 - 1/n.  Ours are the trapezoid rule proper, n/(n-1) times Captum's.
        assert torch.allclose(w, ref * 20 / 19, atol=1e-12)
    else:
        assert torch.allclose(w, ref, atol=1e-12)


def test_quadrature_rejects_bad_settings():
    with pytest.raises(ExplainError, match="steps must be"):
        quadrature(0)
    with pytest.raises(ExplainError, match="unknown integration method 'simpson'"):
        quadrature(8, "simpson")


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_equal_captum(digits_model, digits_batch, method):
    x, y = digits_batch[0][:16], digits_batch[1][:16]
    baseline = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    t = (y + 3) % 10
    ours = integrated_gradients(digits_model, x, baseline, t, steps=24, method=method)
    ref = IntegratedGradients(digits_model).attribute(
        x, baselines=baseline, target=t, n_steps=24, method=method
    )
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
    # completeness: the attributions add up to the logit change
    with torch.no_grad():
        dz = (digits_model(x) - digits_model(baseline)).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(ours.flatten(1).sum(1), dz, atol=0.01 * float(dz.abs().max()))


def test_unit_conductance_is_complete_and_agrees_with_captum(digits_model, digits_batch):
    x, y = digits_batch[0][:12], digits_batch[1][:12]
    baseline = torch.zeros_like(x)
    layer = digits_model.features[1]  # an early ReLU: the rest of the network is far from linear
    (ours,) = unit_conductance(digits_model, layer, x, baseline, [y], steps=64)
    with torch.no_grad():
        dz = (digits_model(x) - digits_model(baseline)).gather(1, y[:, None]).squeeze(1)
    assert ((ours.sum(1) - dz).abs() / dz.abs()).max() < 0.01
    # Captum's layer conductance (left Riemann sums, per neuron) summed over positions: the same
    # quantity with a coarser rule, so it agrees to within its own discretisation error
    ref = LayerConductance(digits_model, layer).attribute(
        x, baselines=baseline, target=y, n_steps=400, method="riemann_right"
    )
    ref = ref.flatten(2).sum(2)
    assert torch.allclose(ours, ref, atol=0.02 * float(dz.abs().max()))
