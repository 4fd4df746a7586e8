"""Whole-photo scenes: every usable person wears the patch, skipped persons are counted, and ASR
counts persons (not photos) among those found without the patch."""

from __future__ import annotations

import pytest
import torch

from edgeguard.attacks.patch import attack_success, person_scores
from edgeguard.attacks.patch.placement import PlacementError, torso_patch
from edgeguard.attacks.patch.scenes import person_scenes
from edgeguard.attacks.patch.transforms import EOT
from edgeguard.data.persons import PersonPhoto, PersonPhotos
from edgeguard.models.detectors import Detections, PersonDetector


def photos() -> PersonPhotos:
    """Two black photos: one with two standing persons and a sitting (wide) one, one with a tiny
    person only."""
    img = torch.zeros(3, 200, 300, dtype=torch.uint8)
    a = PersonPhoto(
        "a.png",
        "a",
        img,
        torch.tensor([[20.0, 20, 80, 180], [150, 30, 200, 190], [220, 100, 299, 150]]),
    )
    b = PersonPhoto("b.png", "b", img, torch.tensor([[10.0, 10, 20, 40]]))
    return PersonPhotos([a, b])


def test_scenes_stretch_photos_keep_wearers_and_count_the_rest():
    scenes, skipped = person_scenes(photos(), size=(100, 150), min_height=20)
    assert skipped == {"small": 1, "wide": 1, "no wearer": 1}
    assert len(scenes) == 1 and scenes.persons == 2 and scenes.images.shape == (1, 3, 100, 150)
    assert torch.allclose(scenes.boxes[0][0], torch.tensor([10.0, 10, 40, 90]))  # halved
    assert torch.allclose(scenes.patch_boxes[0][1], torso_patch(scenes.boxes[0][1], 1.0, "torso"))
    with pytest.raises(PlacementError, match="no photo with a usable person"):
        person_scenes(PersonPhotos(photos().photos[1:]), min_height=100)


def test_every_wearer_gets_the_patch_and_nothing_else_changes():
    scenes, _ = person_scenes(photos(), size=(200, 300), min_height=35)
    images, boxes = scenes.dress(torch.ones(3, 8, 8), EOT.none(), None, samples=2)
    assert images.shape == (2, 3, 200, 300) and len(boxes) == 2
    for img in images:
        for x1, y1, x2, y2 in scenes.patch_boxes[0].tolist():
            dx, dy = (x2 - x1) / 4, (y2 - y1) / 4  # the patch's edge pixels blend with the shirt
            inner = img[:, int(y1 + dy) : int(y2 - dy), int(x1 + dx) : int(x2 - dx)]
            assert inner.min() > 0.99  # printed white
        covered = torch.zeros(200, 300, dtype=torch.bool)
        for x1, y1, x2, y2 in scenes.patch_boxes[0].tolist():
            covered[int(y1) - 3 : int(y2) + 4, int(x1) - 3 : int(x2) + 4] = True
        assert img[:, ~covered].max() < 0.01  # the rest of the photo (the sitting person too)


class TorsoBrightness(PersonDetector):
    """A stand-in detector: one candidate per person box given at construction, scored by how dark
    its torso is (a bright patch hides it)."""

    threshold = 0.5

    def __init__(self, boxes: torch.Tensor) -> None:
        super().__init__()
        self.boxes = boxes

    def candidates(self, images):
        out = []
        for img in images:
            scores = torch.stack(
                [
                    1
                    - img[
                        :, int(b[1]) + 60 : int(b[1]) + 90, int(b[0]) + 20 : int(b[0]) + 40
                    ].mean()
                    for b in self.boxes
                ]
            )
            out.append(Detections(self.boxes, scores))
        return out


def test_asr_counts_persons_of_scenes_found_without_the_patch():
    scenes, _ = person_scenes(photos(), size=(200, 300), min_height=35)
    det = TorsoBrightness(scenes.boxes[0])

    def check(images, boxes):
        with torch.no_grad():
            found = det(images)
        return torch.tensor(
            [
                len(f) > 0 and bool((f.boxes == b).all(1).any())
                for f, bs in zip(found, boxes, strict=True)
                for b in bs
            ]
        )

    white = attack_success(check, scenes, torch.ones(3, 8, 8), EOT.none(), None, samples=3)
    assert (white.persons, white.clean_detected, white.attacked, white.hidden) == (2, 2, 6, 6)
    assert white.per_person.tolist() == [3, 3]
    black = attack_success(check, scenes, torch.zeros(3, 8, 8), EOT.none(), None, samples=3)
    assert black.rate == 0.0
    scores = person_scores(det, scenes.images, scenes.boxes, iou=0.5)
    assert scores.shape == (2,) and torch.allclose(scores, torch.full((2,), 0.5))


def test_zeroth_order_trainer_on_scenes_lowers_a_black_box_score_and_keeps_snapshots():
    from edgeguard.attacks.patch import ZOConfig, ZOTShirt

    scenes, _ = person_scenes(photos(), size=(200, 300), min_height=35)
    det = TorsoBrightness(scenes.boxes[0])

    def black_box(images, boxes):  # outputs only: the torso darkness of each wearer
        with torch.no_grad():
            return person_scores(det, images, boxes, iou=0.5)

    cfg = ZOConfig(steps=30, batch=1, samples=1, q=4, grid=4, size=(16, 12), eot=EOT.none(), seed=0)
    start = torch.full((3, 16, 12), 0.3)
    before = float(black_box(*scenes.dress(start, EOT.none())).mean())
    res = ZOTShirt(black_box, cfg).train(scenes, init=start, snapshots=[50, 100])
    after = float(black_box(*scenes.dress(res.patch, EOT.none())).mean())
    assert after < before - 0.1  # brighter torsos: the score the black box reports went down
    assert sorted(res.snapshots) == [50, 100] and res.history[-1]["queries"] == 30 * 5
