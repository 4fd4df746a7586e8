"""Loading patches back from what training writes."""

import pytest
import torch
from safetensors.torch import save_file

from edgeguard.attacks.patch.study import load_patch
from edgeguard.report.plots import save_patch


def test_print_resolution_png_loads_back_to_the_patch(tmp_path):
    patch = torch.rand(3, 80, 56, generator=torch.Generator().manual_seed(0))
    path = save_patch(patch, tmp_path / "p.png", print_side=256)  # 3x nearest upscale, 8-bit
    back = load_patch(path, (80, 56))
    assert back.shape == (3, 80, 56)
    assert (back - patch).abs().max() <= 0.5 / 255 + 1e-6


def test_safetensors_patch_keeps_its_own_size(tmp_path):
    patch = torch.rand(3, 20, 30)
    save_file({"patch": patch}, str(tmp_path / "p.safetensors"))
    assert torch.equal(load_patch(tmp_path / "p.safetensors", (80, 56)), patch)


def test_bad_patch_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_patch(tmp_path / "missing.png", (8, 8))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_patch(tmp_path / "junk.png", (8, 8))
    save_file({"other": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="no \\[3, h, w\\] 'patch'"):
        load_patch(tmp_path / "w.safetensors", (8, 8))


def test_load_crops_folds_hold_out_every_person_once(tmp_path):
    import cv2
    import numpy as np

    from edgeguard.attacks.patch.study import load_crops

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):  # one 100 px tall person per photo
        cv2.imwrite(
            str(tmp_path / "images" / f"s_{i}.png"), np.full((160, 100, 3), 40 * i, np.uint8)
        )
        rows.append(f"s_{i}.png,100,160,30 20 70 140")
    (tmp_path / "manifest.csv").write_text("file,width,height,boxes\n" + "\n".join(rows) + "\n")
    held = []
    for i in range(3):
        split = load_crops(tmp_path, fold=(i, 3), shape="torso")
        assert len(split.train) + len(split.test) == 6
        assert not set(split.train.names) & set(split.test.names)
        held += split.test.names
    assert sorted(held) == sorted(f"s_{i}.png#0" for i in range(6))
    with pytest.raises(ValueError, match=r"fold index must be in \[0, 3\), got 3"):
        load_crops(tmp_path, fold=(3, 3))
