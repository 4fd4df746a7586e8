from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeguard.modelfile import load_model, save_model
from edgeguard.models import build, count_flops
from edgeguard.sparsity import (
    SparsityError,
    apply_masks,
    get_masks,
    get_scheme,
    prunable_layers,
    prune_model,
)

SHAPE = (1, 3, 16, 32, 32)


def small_c3d(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("c3d", num_classes=5, width=0.125, clip_size=[16, 32, 32])


def test_prunable_layers_skip_the_classifier():
    model = small_c3d()
    layers = prunable_layers(model)
    assert layers[0] == "conv1" and "fc7" in layers and "fc8" not in layers
    assert "fc8" in prunable_layers(model, include_classifier=True)


@pytest.mark.parametrize("scheme", ["filter", "channel", "column", "vanilla", "kgs"])
def test_prune_to_a_flops_target(scheme):
    model = small_c3d()
    result = prune_model(model, scheme, flops_reduction=2.5, input_shape=SHAPE)
    report = count_flops(model, SHAPE)  # reads the attached masks
    assert report.kept_macs == result.flops.kept_macs
    # the smallest uniform rate that reaches the target: within one unit of 2.5x
    assert 2.5 <= report.reduction < 2.5 * 1.05
    sch = get_scheme(scheme)
    for name, mask in get_masks(model).items():
        assert sch.is_structured(mask)
        w = dict(model.named_modules())[name].weight
        assert not w[~mask].any()


def test_unreachable_flops_target_is_explained():
    model = small_c3d()
    with pytest.raises(SparsityError, match="out of reach.*at most"):
        prune_model(model, "kgs", flops_reduction=3.0, input_shape=SHAPE, layers=["conv5b"])


def test_rates_dict_and_profile(tmp_path: Path):
    model = small_c3d()
    result = prune_model(model, "kgs", rates={"conv2": 0.5, "conv3a": 0.25}, input_shape=SHAPE)
    assert set(result.masks) == {"conv2", "conv3a"}
    u = get_scheme("kgs").units_of_mask(result.masks["conv2"])
    assert int((~u).sum()) == round(0.5 * u.numel())
    profile = tmp_path / "profile.yaml"
    profile.write_text("rates:\n  conv2: 0.6\n  conv4a: 0.3\n")
    result = prune_model(small_c3d(), "vanilla", rates=profile)
    assert result.rates == {"conv2": 0.6, "conv4a": 0.3}


def test_bad_prune_requests():
    model = small_c3d()
    with pytest.raises(SparsityError, match="exactly one"):
        prune_model(model, "kgs")
    with pytest.raises(SparsityError, match="no layer named 'conv9'.*prunable layers: conv1"):
        prune_model(model, "kgs", rates={"conv9": 0.5})
    with pytest.raises(SparsityError, match="unsupported layer type MaxPool3d"):
        prune_model(model, "kgs", rates={"pool1": 0.5})
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        prune_model(model, "kgs", rates={"conv2": 1.2})
    with pytest.raises(SparsityError, match=">= 1"):
        prune_model(model, "kgs", flops_reduction=0.5, input_shape=SHAPE)
    with pytest.raises(SparsityError, match="input_shape"):
        prune_model(model, "kgs", flops_reduction=2.0)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4))
    with pytest.raises(SparsityError, match="groups=4"):
        prune_model(grouped, "filter", rates={"0": 0.5})
    with pytest.raises(SparsityError, match="no prunable layers"):
        prune_model(grouped, "filter", rates=0.5)
    with pytest.raises(SparsityError, match="profile file not found"):
        prune_model(model, "kgs", rates=Path("/nonexistent/profile.yaml"))


def test_masks_stay_applied_after_optimizer_steps_and_on_load(tmp_path: Path):
    model = small_c3d()
    prune_model(model, "kgs", rates=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.rand(2, *SHAPE[1:])).sum().backward()
    opt.step()
    apply_masks(model)
    for name, mask in get_masks(model).items():
        assert not dict(model.named_modules())[name].weight[~mask].any()
    path = save_model(model, tmp_path / "m.safetensors", get_scheme("kgs"))
    loaded, masks, spec = load_model(path)
    assert set(masks) == set(get_masks(model))
    x = torch.rand(2, *SHAPE[1:])
    model.eval()
    loaded.eval()
    assert torch.equal(model(x), loaded(x))
    assert spec["layers"]["conv2"]["scheme"] == {"name": "kgs", "gm": 8, "gn": 4}
    assert count_flops(loaded, SHAPE).kept_macs == count_flops(model, SHAPE).kept_macs
