"""Grad-CAM and CAM against Captum and a hand-worked relation; top-k overlap on hand examples."""

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from edgeguard.explain import (
    ExplainError,
    class_activation_map,
    grad_cam,
    random_overlap,
    top_mask,
    topk_overlap,
)


@pytest.mark.parametrize("layer", ["features.6", "features.3"])
def test_grad_cam_equals_captum_layer_grad_cam(digits_model, digits_batch, layer):
    x, y = digits_batch[0][:16], digits_batch[1][:16]
    module = dict(digits_model.named_modules())[layer]
    ours = grad_cam(digits_model, x, layer, y)
    ref = LayerGradCam(digits_model, module).attribute(x, target=y, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, tuple(x.shape[2:]), "bilinear")
    assert ours.shape == (16, 1, 8, 8)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_grad_cam_of_a_gap_linear_network_is_cam_over_the_map_area(digits_model, digits_batch):
    # dz_c/dA_k = w_ck / (h*w) everywhere, so Grad-CAM without ReLU = CAM / (h*w)
    x, y = digits_batch[0][:8], digits_batch[1][:8]
    cam = class_activation_map(digits_model, x, "features.6", y, upsample=False)
    gc = grad_cam(digits_model, x, "features.6", y, relu=False, upsample=False)
    assert torch.allclose(gc, cam / (cam.shape[2] * cam.shape[3]), atol=1e-6)
    with pytest.raises(ExplainError, match="right before global average pooling"):
        class_activation_map(digits_model, x, "features.1", y)


def test_topk_overlap_hand_worked():
    a = torch.tensor([[9.0, 8, 1, 0, 0, 0, 0, 0, 0, 7]])
    b = torch.tensor([[5.0, 0, 6, 0, 0, 0, 0, 0, 0, 7]])
    assert top_mask(a, 0.3).tolist() == [
        [True, True, False, False, False, False, False, False, False, True]
    ]
    assert topk_overlap(a, b, 0.3).item() == pytest.approx(2 / 3)  # {0, 9} of {0, 1, 9}
    assert topk_overlap(a, a, 0.2).item() == 1.0
    with pytest.raises(ExplainError, match="fraction must be in"):
        topk_overlap(a, b, 0.0)
    with pytest.raises(ExplainError, match="differ in shape"):
        topk_overlap(a, b[:, :5], 0.3)


def test_random_overlap_is_the_chance_level():
    b = torch.rand(50, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(random_overlap(b, 0.1, trials=10).mean()) == pytest.approx(0.1, abs=0.01)
