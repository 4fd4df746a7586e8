from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeguard.models import build, count_flops
from edgeguard.sparsity import (
    SparsityError,
    apply_masks,
    get_masks,
    get_scheme,
    load_pruned,
    prunable_layers,
    prune_model,
    save_pruned,
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
    path = save_pruned(model, tmp_path / "m.safetensors", get_scheme("kgs"))
    loaded, masks, spec = load_pruned(path)
    assert set(masks) == set(get_masks(model))
    x = torch.rand(2, *SHAPE[1:])
    model.eval()
    loaded.eval()
    assert torch.equal(model(x), loaded(x))
    assert spec["layers"]["conv2"]["scheme"] == {"name": "kgs", "gm": 8, "gn": 4}
    assert count_flops(loaded, SHAPE).kept_macs == count_flops(model, SHAPE).kept_macs


def _rewrite_spec(path: Path, spec: dict) -> None:
    """Replace the spec embedded in a saved weights file (what a tampering user would do)."""
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(path)),
        str(path),
        metadata={"format": "edgeguard.pruned/1", "edgeguard_spec": json.dumps(spec)},
    )


def test_loading_rejects_mismatched_specs(tmp_path: Path):
    a, b = small_c3d(0), small_c3d(1)
    prune_model(a, "kgs", rates=0.5)
    prune_model(b, "kgs", rates=0.3)
    pa = save_pruned(a, tmp_path / "a.safetensors", get_scheme("kgs"))
    pb = save_pruned(b, tmp_path / "b.safetensors", get_scheme("kgs"))
    # the spec of b inside the weights of a
    _rewrite_spec(pa, json.loads(pb.with_suffix(".json").read_text()))
    with pytest.raises(SparsityError, match="does not match its weights"):
        load_pruned(pa)
    # a spec claiming a different structure
    spec = json.loads(pb.with_suffix(".json").read_text())
    spec["layers"]["conv2"]["scheme"] = {"name": "filter"}
    _rewrite_spec(pb, spec)
    with pytest.raises(SparsityError, match="does not follow the 'filter' structure"):
        load_pruned(pb)


def test_truncated_and_missing_files(tmp_path: Path):
    model = small_c3d()
    prune_model(model, "filter", rates=0.5)
    path = save_pruned(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SparsityError, match="truncated"):
        load_pruned(path)
    with pytest.raises(SparsityError, match="not found"):
        load_pruned(tmp_path / "none.safetensors")


def test_files_without_an_embedded_spec_read_the_json(tmp_path: Path):
    """Models saved before the spec moved into the weights file load from the JSON beside them."""
    from safetensors.torch import load_file, save_file

    model = small_c3d()
    prune_model(model, "filter", rates=0.5)
    path = save_pruned(model, tmp_path / "m.safetensors")
    save_file(load_file(str(path)), str(path), metadata={"format": "edgeguard.pruned/1"})
    _, masks, _ = load_pruned(path)
    assert torch.equal(masks["conv2"], get_masks(model)["conv2"])
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(SparsityError, match="not valid JSON"):
        load_pruned(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(SparsityError, match="sparsity spec not found"):
        load_pruned(path)


def test_crash_between_the_two_writes_keeps_a_loadable_model(tmp_path: Path, monkeypatch, caplog):
    """Replacing a saved model: the process dies after the weights file is renamed into place but
    before the JSON copy is: the new model loads (the stale JSON is reported), nothing is lost."""
    from edgeguard.engine import atomic

    old, new = small_c3d(0), small_c3d(1)
    prune_model(new, "kgs", rates=0.5)
    path = save_pruned(old, tmp_path / "m.safetensors")
    real = atomic.os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(new, path, get_scheme("kgs"))
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="edgeguard"):
        loaded, masks, _ = load_pruned(path)
    assert "differs from the spec inside" in caplog.text
    for k, v in new.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(masks["conv2"], get_masks(new)["conv2"])


def test_failed_save_leaves_nothing_half_written(tmp_path: Path, monkeypatch):
    model = small_c3d()
    path = save_pruned(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("edgeguard.sparsity.io.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(small_c3d(1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
