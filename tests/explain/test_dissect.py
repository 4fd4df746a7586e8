"""Network dissection on planted units and a hand-checked IoU; Broden layout; attack sensitivity."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from edgeguard.data import DatasetError
from edgeguard.explain import (
    Broden,
    ExplainError,
    SyntheticConcepts,
    dissect,
    sensitivity_vs_interpretability,
    unit_sensitivity,
)
from edgeguard.explain.dissect import Dissection

HUES = ("red", "green", "blue", "yellow")


class Planted(nn.Module):
    """Units 0-3 fire on one colour each (chromaticity, so stripes and checks fire too, blurred so
    object interiors peak); units 4-7 are the same maps with their pixels shuffled by one fixed
    permutation: equally strong activations that carry no concept."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.blur = nn.AvgPool2d(5, 1, 2, count_include_pad=False)
        self.register_buffer(
            "perm", torch.randperm(size * size, generator=torch.Generator().manual_seed(0))
        )
        self.units = nn.Identity()

    def forward(self, x):
        r, g, b = x.unbind(1)
        s = x.sum(1) + 1e-6
        hue = [
            r - torch.maximum(g, b),
            g - torch.maximum(r, b),
            b - torch.maximum(r, g),
            torch.minimum(r, g) - b,
        ]
        det = self.blur(torch.stack([(h / s).relu() for h in hue], 1))
        shuffled = det.flatten(2)[:, :, self.perm].view_as(det)
        return self.units(torch.cat([det, shuffled], 1))


def test_planted_units_get_their_concept_and_shuffled_units_none():
    ds = SyntheticConcepts(300, size=32, seed=0)
    d = dissect(Planted(32), "units", ds, progress=False)
    assert d.labels()[:4] == list(HUES)
    assert d.labels()[4:] == [None] * 4
    assert (d.best_iou[:4] > 0.04).all() and (d.best_iou[4:] < 0.03).all()
    assert d.detector_counts() == {"colour": 4}


class Channel(nn.Module):
    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        return self.units(x[:, :1])


class Tiny(torch.utils.data.Dataset):
    """Two 4x4 images; concept 1 on a block, concept 2 only in image 1, whose category image 0 lacks."""

    concepts = ("a", "b")
    concept_category = (0, 1)
    categories = ("cat0", "cat1")

    def __init__(self, label_size=4):
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(2, 3, 4, 4, generator=g)
        self.labels = torch.zeros(2, 2, label_size, label_size, dtype=torch.long)
        self.labels[:, 0, :2, :2] = 1
        self.labels[1, 1, 1:, 1:] = 2
        self.has = torch.tensor([[True, False], [True, True]])

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.images[i], self.labels[i], self.has[i]


def test_iou_matches_a_direct_computation():
    ds = Tiny()
    d = dissect(Channel(), "units", ds, quantile=0.25, progress=False)
    act = ds.images[:, 0].numpy()  # [2, 4, 4]
    thr = np.sort(act.ravel())[::-1][7]  # 25% of 32 values: the 8th largest
    assert d.thresholds[0].item() == pytest.approx(thr)
    m = act > thr
    a = (ds.labels[:, 0] == 1).numpy()
    iou_a = (m & a).sum() / (m | a).sum()
    b = (ds.labels[1, 1] == 2).numpy()  # only image 1 is annotated for category 1
    iou_b = (m[1] & b).sum() / (m[1] | b).sum()
    assert d.iou[0].tolist() == pytest.approx([iou_a, iou_b])


def test_mismatched_mask_sizes_and_bad_settings_are_reported():
    ds = Tiny()
    ds.labels = [ds.labels[0], torch.zeros(2, 5, 5, dtype=torch.long)]
    with pytest.raises(ExplainError, match=r"item 1: label maps have shape \(2, 5, 5\)"):
        dissect(Channel(), "units", ds, progress=False)
    with pytest.raises(ExplainError, match="quantile must be"):
        dissect(Channel(), "units", Tiny(), quantile=0.9)
    with pytest.raises(ExplainError, match="no layer named 'conv'"):
        dissect(Channel(), "conv", Tiny())


def _write_broden(root: Path) -> None:
    (root / "images" / "seg").mkdir(parents=True)
    (root / "label.csv").write_text(
        "number,name,category,frequency,coverage,syns\n0,-,-,0,0,\n1,red-c,color(10),1,1,\n"
        "300,dog,object(5);part(1),1,1,\n7,street,scene(3),1,1,\n"
    )
    rows = ["image,split,ih,iw,sh,sw,color,object,part,material,scene,texture"]
    for i in range(3):
        img = np.full((8, 8, 3), 40 * i, np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        seg = np.zeros((4, 4, 3), np.uint8)  # BGR: label 300 = R 44 + 256 * G 1
        seg[:2, :2, 2], seg[:2, :2, 1] = 44, 1
        cv2.imwrite(str(root / "images" / "seg" / f"obj{i}.png"), seg)
        scene = "7" if i == 2 else ""
        rows.append(f"im{i}.png,train,8,8,4,4,,seg/obj{i}.png,,,{scene},")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


def test_broden_layout_is_read(tmp_path):
    _write_broden(tmp_path)
    ds = Broden(tmp_path)
    assert ds.concepts == ["red-c", "dog", "street"] and len(ds) == 3
    image, labels, has = ds[2]
    assert image.shape == (3, 8, 8) and labels.shape == (2, 4, 4)
    assert labels[0, 0, 0] == 2 and labels[0, 3, 3] == 0  # "dog" is concept id 2
    assert (labels[1] == 3).all()  # the scene fills the image
    assert has.tolist() == [False, True, False, False, True, False]
    assert not ds[0][2][4]  # no scene annotated in image 0
    d = dissect(Channel(), "units", ds, quantile=0.1, progress=False)
    assert d.iou.shape == (1, 3)
    with pytest.raises(DatasetError, match="missing .*index.csv"):
        Broden(tmp_path / "nowhere")


def test_unit_sensitivity_hand_worked_and_correlation():
    model = Channel()
    x = torch.full((2, 3, 2, 2), 0.5)
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.9  # one change of 0.4 over 8 values of mean magnitude 0.5
    s = unit_sensitivity(model, "units", x, xa)
    assert s.tolist() == pytest.approx([0.4 / 8 / 0.5])
    iou = torch.tensor([[0.01, 0.0], [0.05, 0.0], [0.2, 0.1], [0.08, 0.0]])
    d = Dissection("u", ["a", "b"], ["c", "c"], torch.zeros(4), iou, 0.04)
    corr = sensitivity_vs_interpretability(torch.tensor([0.1, 0.3, 0.9, 0.5]), d)
    assert corr.rho == pytest.approx(1.0) and corr.units == 4
    assert corr.detector_sensitivity == pytest.approx((0.3 + 0.9 + 0.5) / 3)
    assert corr.other_sensitivity == pytest.approx(0.1)
    with pytest.raises(ExplainError, match="same layer"):
        sensitivity_vs_interpretability(torch.ones(3), d)
