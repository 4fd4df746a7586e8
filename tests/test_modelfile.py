"""The model file format: dense and pruned models, GNNs and patches; tampered, truncated and
half-written files."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeguard.modelfile import (
    ModelFileError,
    load_model,
    load_patch_file,
    save_model,
    save_patch_file,
)
from edgeguard.models import build
from edgeguard.sparsity import get_masks, get_scheme, prune_model


def small_c3d(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("c3d", num_classes=5, width=0.125, clip_size=[16, 32, 32])


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
    pa = save_model(a, tmp_path / "a.safetensors", get_scheme("kgs"))
    pb = save_model(b, tmp_path / "b.safetensors", get_scheme("kgs"))
    # the spec of b inside the weights of a
    _rewrite_spec(pa, json.loads(pb.with_suffix(".json").read_text()))
    with pytest.raises(ModelFileError, match="does not match its weights"):
        load_model(pa)
    # a spec claiming a different structure
    spec = json.loads(pb.with_suffix(".json").read_text())
    spec["layers"]["conv2"]["scheme"] = {"name": "filter"}
    _rewrite_spec(pb, spec)
    with pytest.raises(ModelFileError, match="does not follow the 'filter' structure"):
        load_model(pb)


def test_truncated_and_missing_files(tmp_path: Path):
    model = small_c3d()
    prune_model(model, "filter", rates=0.5)
    path = save_model(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "none.safetensors")


def test_files_without_an_embedded_spec_read_the_json(tmp_path: Path):
    """Models saved before the spec moved into the weights file load from the JSON beside them."""
    from safetensors.torch import load_file, save_file

    model = small_c3d()
    prune_model(model, "filter", rates=0.5)
    path = save_model(model, tmp_path / "m.safetensors")
    save_file(load_file(str(path)), str(path), metadata={"format": "edgeguard.pruned/1"})
    _, masks, _ = load_model(path)
    assert torch.equal(masks["conv2"], get_masks(model)["conv2"])
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match="model spec not found"):
        load_model(path)


def test_crash_between_the_two_writes_keeps_a_loadable_model(tmp_path: Path, monkeypatch, caplog):
    """Replacing a saved model: the process dies after the weights file is renamed into place but
    before the JSON copy is: the new model loads (the stale JSON is reported), nothing is lost."""
    from edgeguard.engine import atomic

    old, new = small_c3d(0), small_c3d(1)
    prune_model(new, "kgs", rates=0.5)
    path = save_model(old, tmp_path / "m.safetensors")
    real = atomic.os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_model(new, path, get_scheme("kgs"))
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="edgeguard"):
        loaded, masks, _ = load_model(path)
    assert "differs from the spec inside" in caplog.text
    for k, v in new.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(masks["conv2"], get_masks(new)["conv2"])


def test_failed_save_leaves_nothing_half_written(tmp_path: Path, monkeypatch):
    model = small_c3d()
    path = save_model(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("edgeguard.modelfile.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(small_c3d(1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_a_gnn_round_trips_with_its_architecture(tmp_path: Path):
    torch.manual_seed(0)
    model = build("gcn", in_features=6, num_classes=3, hidden=8)
    path = save_model(model, tmp_path / "gcn.safetensors", extra={"dataset": "toy"})
    loaded, masks, spec = load_model(path)
    assert masks == {} and spec["arch"]["name"] == "gcn" and spec["extra"] == {"dataset": "toy"}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_patch_round_trips_and_is_not_a_model(tmp_path: Path):
    patch = torch.rand(3, 10, 7, generator=torch.Generator().manual_seed(0))
    path = save_patch_file(patch, tmp_path / "p.safetensors", {"detectors": "centernet"})
    back, extra = load_patch_file(path)
    assert torch.equal(back, patch) and extra == {"detectors": "centernet"}
    with pytest.raises(ModelFileError, match="holds a patch, not a model"):
        load_model(path)
    model_path = save_model(small_c3d(), tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="holds a model, not a patch"):
        load_patch_file(model_path)
    with pytest.raises(ModelFileError, match=r"a patch is \[3, h, w\]"):
        save_patch_file(torch.rand(4, 5, 5), tmp_path / "q.safetensors")


def test_a_patch_with_values_outside_0_1_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"patch": torch.full((3, 4, 4), 2.0)}, str(bad))  # the older bare layout
    with pytest.raises(ModelFileError, match=r"outside \[0, 1\]"):
        load_patch_file(bad)
    save_file({"patch": torch.full((3, 4, 4), 0.5)}, str(bad))
    assert load_patch_file(bad)[1] == {}
