"""TShirtStudy: the split form and trainer defaults it picks per detector, and its refusals."""

import cv2
import numpy as np
import pytest
import torch

from edgeguard.attacks.patch.transforms import EOT
from edgeguard.attacks.patch.workflow import TShirtStudy
from edgeguard.models.detectors import Detections, PersonDetector


class Nobody(PersonDetector):
    """Finds no one: every candidate scores below the threshold."""

    threshold = 0.5

    def candidates(self, images):
        return [Detections(torch.zeros(0, 4), torch.zeros(0)) for _ in images]


def _photos(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):  # one 100 px tall person per photo
        cv2.imwrite(str(tmp_path / "images" / f"s_{i}.png"), np.full((160, 100, 3), 40, np.uint8))
        rows.append(f"s_{i}.png,100,160,30 20 70 140")
    (tmp_path / "manifest.csv").write_text("file,width,height,boxes\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_coco_detectors_get_whole_photos_and_sliding_windows_get_crops(tmp_path):
    root = _photos(tmp_path)
    crops = TShirtStudy.open(root, ["hog", "opencv"], held_out=0.5)
    assert not crops.whole and crops.iou == 0.3 and crops.config().topk == 3
    assert len(crops.train_set) + len(crops.test_set) == 6  # one crop per person
    # any COCO detector among the specs (with or without a :PATH) makes it whole photos
    whole = TShirtStudy.open(root, ["hog", "nanodet:/some/model.json"], held_out=0.5)
    assert whole.whole and whole.iou == 0.5 and whole.config(steps=3).topk == 1
    assert whole.config(steps=3).steps == 3 and whole.config().iou == 0.5
    assert "whole photos: " in whole.describe() and "persons: " in crops.describe()


def test_a_detector_that_finds_nobody_leaves_nothing_to_attack(tmp_path):
    study = TShirtStudy.open(_photos(tmp_path), ["toy"], held_out=0.5, loaded={"toy": Nobody()})
    assert study.detector("toy") is study.detectors["toy"]  # loaded ones are reused
    with pytest.raises(ValueError, match="no training person is detected by toy"):
        study.attackable(["toy"])
    with pytest.raises(ValueError, match="train needs at least one detector"):
        study.train([])


class Everyone(PersonDetector):
    """Finds every person of ``_photos`` whatever it wears: one confident box on it."""

    threshold = 0.5

    def candidates(self, images):
        box = torch.tensor([[30.0, 20.0, 70.0, 140.0]])
        return [Detections(box, torch.ones(1)) for _ in images]


def test_patches_are_evaluated_on_the_held_out_or_the_training_wearers(tmp_path):
    study = TShirtStudy.open(_photos(tmp_path), ["toy"], held_out=0.5, loaded={"toy": Everyone()})
    patch = {"grey": torch.full((3, 16, 12), 0.5)}
    test = study.evaluate(patch, ["toy"], EOT(), samples=1)[("grey", "toy")]
    train = study.evaluate(patch, ["toy"], EOT(), samples=1, on="train")[("grey", "toy")]
    # one person a photo: each split's own wearers, all found, none hidden
    assert (test.persons, train.persons) == (study.test_set.persons, study.train_set.persons)
    assert test.persons + train.persons == 6
    assert train.clean_detected == train.persons and train.hidden == 0
    with pytest.raises(ValueError, match="evaluate on 'test' or 'train' wearers, got 'all'"):
        study.evaluate(patch, ["toy"], EOT(), samples=1, on="all")
