"""Patch placement, EOT, colour transform, printability and the ASR bookkeeping."""

from dataclasses import replace

import pytest
import torch

from edgeguard.attacks.patch import attack_success, person_scores
from edgeguard.attacks.patch.placement import (
    PersonCrops,
    PlacementError,
    apply_patch,
    person_crops,
    torso_patch,
    torso_square,
)
from edgeguard.attacks.patch.printability import default_palette, non_printability, total_variation
from edgeguard.attacks.patch.transforms import EOT, ColorTransform, appearance, backward_map
from edgeguard.data.persons import PersonPhoto, PersonPhotos
from edgeguard.models.detectors import Detections, PersonDetector


def photos() -> PersonPhotos:
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 300, 200, generator=g) * 255).to(torch.uint8)
    boxes = torch.tensor([[50.0, 40.0, 130.0, 240.0], [10.0, 10.0, 20.0, 30.0]])
    return PersonPhotos([PersonPhoto("a.png", "src", img, boxes)])


def test_crops_normalise_person_height_and_count_what_is_skipped():
    crops, skipped = person_crops(photos(), size=(176, 112), person_height=100)
    assert len(crops) == 1 and skipped == {"small": 1, "wide": 0}
    x1, y1, x2, y2 = crops.boxes[0].tolist()
    assert y2 - y1 == pytest.approx(100, abs=1) and (x1 + x2) / 2 == pytest.approx(56, abs=1)
    sq = crops.patch_boxes[0]
    assert x1 < sq[0] < sq[2] < x2 and y1 < sq[1] < sq[3] < y1 + 0.6 * (y2 - y1)


def test_constant_patch_without_transformations_fills_its_square_only():
    crops, _ = person_crops(photos())
    patch = torch.zeros(3, 32, 32)
    patch[1] = 1.0  # green
    out = apply_patch(crops, patch, EOT.none())
    x1, y1, x2, y2 = crops.patch_boxes[0].tolist()
    inner = out[0, :, round(y1) + 2 : round(y2) - 2, round(x1) + 2 : round(x2) - 2]
    assert torch.allclose(
        inner, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand_as(inner), atol=1e-6
    )
    changed = (out[0] != crops.images[0]).any(0)
    rows, cols = changed.nonzero().T
    assert rows.min() >= y1 - 1 and rows.max() <= y2 + 1 and cols.min() >= x1 - 1
    assert cols.max() <= x2 + 1


def test_torso_print_fills_the_torso_region_with_the_patch_stretched_to_it():
    crops, _ = person_crops(photos(), scale=1.0, shape="torso")
    x1, y1, x2, y2 = crops.boxes[0].tolist()
    px1, py1, px2, py2 = crops.patch_boxes[0].tolist()
    w, h = x2 - x1, y2 - y1  # region: 70% of the width, 40% of the height from 20% down
    assert px2 - px1 == pytest.approx(0.7 * w, rel=1e-5)
    assert py2 - py1 == pytest.approx(0.4 * h, rel=1e-5)
    assert py1 == pytest.approx(y1 + 0.2 * h, rel=1e-5)
    # left half red, right half blue: without transformations the colour boundary is the
    # region's vertical midline, so x is mapped to the patch by the region's width
    patch = torch.zeros(3, 40, 20)
    patch[0, :, :10] = 1.0
    patch[2, :, 10:] = 1.0
    out = apply_patch(crops, patch, EOT.none())[0]
    mid, ys = (px1 + px2) / 2, slice(round(py1) + 2, round(py2) - 2)
    left = out[:, ys, round(px1) + 1 : round(mid) - 1]
    right = out[:, ys, round(mid) + 1 : round(px2) - 1]
    assert torch.allclose(left, torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand_as(left), atol=1e-6)
    assert torch.allclose(
        right, torch.tensor([0, 0, 1.0]).view(3, 1, 1).expand_as(right), atol=1e-6
    )


def test_rotated_torso_print_keeps_its_area_and_is_not_clipped():
    thin = PersonPhoto(
        "t.png", "src", photos().photos[0].image, torch.tensor([[75.0, 40, 125, 240]])
    )
    crops, _ = person_crops(PersonPhotos([thin]), scale=1.0, shape="torso")  # print 2.3x as tall
    x1, y1, x2, y2 = crops.patch_boxes[0].tolist()
    black = PersonCrops(torch.zeros_like(crops.images), crops.boxes, crops.patch_boxes, crops.names)
    turned = EOT(0, 0, 40.0, 0, 0, 0, 0, 0, 0)  # rotations uniform in +-40 degrees
    out = apply_patch(
        black, torch.ones(3, 40, 20), turned, samples=64, generator=torch.Generator().manual_seed(0)
    )
    covered = out.mean(1).sum((1, 2))  # the print's pixels (bilinear edges count fractionally)
    assert covered.tolist() == pytest.approx([(x2 - x1) * (y2 - y1)] * 64, rel=0.04)


def test_thys_draws_are_rotations_within_20_degrees_with_their_noise_level():
    g = torch.Generator().manual_seed(0)
    pts = torch.tensor([[[1.0, 0.0], [0.0, 0.5], [-0.3, -0.7]]]).expand(256, -1, -1)
    back = backward_map(pts, EOT.thys(), g)
    # no scale, shift, perspective or bending: every point keeps its distance to the centre
    assert back.norm(dim=2) == pytest.approx(pts.norm(dim=2), abs=1e-5)
    angle = torch.rad2deg(torch.atan2(back[:, 0, 1], back[:, 0, 0]))
    assert angle.abs().max() <= 20.0 and angle.abs().max() > 18.0  # uniform in +-20
    # the pixel noise has the std of Thys et al.'s uniform +-0.1 noise
    grey = torch.full((64, 3, 16, 16), 0.5)
    out = appearance(grey, replace(EOT.thys(), brightness=0.0, contrast=0.0), g)
    assert float((out - 0.5).std()) == pytest.approx(0.2 / 12**0.5, rel=0.02)


def test_square_patch_is_the_largest_square_of_the_torso_region():
    box = torch.tensor([0.0, 0.0, 40.0, 100.0])
    sq, rect = torso_patch(box, 1.0, "square"), torso_patch(box, 1.0, "torso")
    assert torch.equal(sq, torso_square(box, 1.0))
    assert sq[2] - sq[0] == pytest.approx(28.0) and sq[3] - sq[1] == pytest.approx(28.0)
    assert rect[2] - rect[0] == pytest.approx(28.0) and rect[3] - rect[1] == pytest.approx(40.0)
    assert (sq[:2] + sq[2:]).tolist() == pytest.approx((rect[:2] + rect[2:]).tolist())  # centres
    with pytest.raises(
        PlacementError, match="unknown patch shape 'round'; accepted: square, torso"
    ):
        torso_patch(box, 1.0, "round")


def test_transformed_patch_is_differentiable_and_stays_in_range():
    crops, _ = person_crops(photos())
    patch = torch.rand(3, 32, 32, requires_grad=True)
    out = apply_patch(
        crops, patch, EOT(), ColorTransform(), samples=3, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (3, 3, 176, 112) and out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert patch.grad.abs().sum() > 0
    # different draws move the patch differently
    assert not torch.allclose(out[0], out[1])


def test_bad_patches_are_refused():
    crops, _ = person_crops(photos())
    with pytest.raises(PlacementError, match="larger than the torso"):
        torso_square(torch.tensor([0.0, 0.0, 10.0, 20.0]), 1.2)
    with pytest.raises(PlacementError, match=r"\[3, h, w\]"):
        apply_patch(crops, torch.rand(32, 32))
    with pytest.raises(PlacementError, match="no usable person"):
        person_crops(
            PersonPhotos(
                [
                    photos()
                    .photos[0]
                    .__class__(
                        "b", "s", photos().photos[0].image, torch.tensor([[0.0, 0.0, 5.0, 5.0]])
                    )
                ]
            )
        )


def test_color_transform_fit_recovers_a_known_printer():
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([[0.8, 0.1, 0.0], [0.05, 0.7, 0.1], [0.0, 0.1, 0.75]])
    b = torch.tensor([0.05, 0.08, 0.02])
    chart = torch.rand(24, 3, generator=g)
    fitted = ColorTransform.fit(chart, chart @ m.T + b)
    assert torch.allclose(fitted.matrix, m, atol=1e-5) and torch.allclose(fitted.bias, b, atol=1e-5)
    with pytest.raises(ValueError, match="at least 4"):
        ColorTransform.fit(chart[:3], chart[:3])


def test_printability_and_smoothness_terms():
    pal = default_palette()
    patch = pal[torch.arange(16 * 16) % len(pal)].T.reshape(3, 16, 16)
    assert float(non_printability(patch, pal)) < 1e-5
    assert float(non_printability(torch.ones(3, 4, 4), pal)) == pytest.approx(
        0.1 * 3**0.5, rel=1e-4
    )
    assert float(total_variation(torch.full((3, 8, 8), 0.3))) == 0
    # appearance keeps values in range
    out = appearance(torch.rand(4, 3, 8, 8), EOT(brightness=0.5, contrast=0.5))
    assert out.min() >= 0 and out.max() <= 1


def test_attack_success_counts_only_persons_seen_without_the_patch():
    crops = PersonCrops(
        torch.rand(3, 3, 176, 112),
        torch.tensor([[30.0, 38, 82, 138]] * 3),
        torch.tensor([[40.0, 60, 72, 92]] * 3),
        ["a", "b", "c"],
    )
    crops.images[2] = 0.0  # a dark crop: the stand-in detector misses it without any patch

    def bright_torso(images, boxes):  # "detected" while the torso is not dark
        return images[:, :, 62:90, 42:70].mean((1, 2, 3)) > 0.2

    asr = attack_success(bright_torso, crops, torch.zeros(3, 16, 16), EOT.none(), samples=2)
    assert (asr.clean_detected, asr.attacked, asr.hidden, asr.rate) == (2, 4, 4, 1.0)
    asr = attack_success(bright_torso, crops, torch.ones(3, 16, 16), EOT.none(), samples=2)
    assert asr.rate == 0.0
    assert asr.per_person.tolist() == [0, 0]
    assert asr.interval() == (0.0, 0.0)


def test_asr_interval_resamples_persons():
    from edgeguard.attacks.patch import ASR

    # 10 persons x 4 samples: 6 always hidden, 4 never: rate 0.6.  Resampling persons spreads the
    # rate over 0.6 +- 1.96 * sqrt(0.24 / 10) = [0.30, 0.90]; a binomial over 40 samples would give
    # +- 0.15.  The interval holds the rate and is about that wide.
    asr = ASR(40, 24, 10, 10, torch.tensor([4] * 6 + [0] * 4))
    lo, hi = asr.interval(0.95, draws=4000)
    assert lo <= 0.6 <= hi
    assert 0.45 <= hi - lo <= 0.7
    assert all(v != v for v in ASR(0, 0, 0, 3).interval())  # nan: no persons attacked
    with pytest.raises(ValueError, match="level"):
        asr.interval(1.5)
    both = ASR.pooled([asr, ASR(8, 2, 2, 5, torch.tensor([2, 0]))])
    assert (both.attacked, both.hidden, both.clean_detected, both.persons) == (48, 26, 12, 15)
    assert both.per_person.tolist() == [4] * 6 + [0] * 4 + [2, 0]
    assert both.rate == 26 / 48
    # a second training run on the same 10 persons: counts add per person, so the bootstrap still
    # resamples 10 persons (each now with 8 draws); persons must match
    again = ASR(40, 10, 10, 10, torch.tensor([0, 4] * 3 + [1] * 4))
    runs = ASR.repeated([asr, again])
    assert (runs.attacked, runs.hidden, runs.clean_detected, runs.persons) == (80, 34, 10, 10)
    assert runs.per_person.tolist() == [4, 8, 4, 8, 4, 8, 1, 1, 1, 1]
    lo, hi = runs.interval(0.95, draws=4000)
    assert lo <= 34 / 80 <= hi
    with pytest.raises(ValueError, match="same persons"):
        ASR.repeated([asr, ASR(8, 2, 2, 5, torch.tensor([2, 0]))])


def test_asr_lead_is_a_paired_interval_over_the_same_persons():
    from edgeguard.attacks.patch import ASR

    # 10 persons x 4 draws; patch A hides 2 more draws of every person than patch B: the lead is
    # 0.5 in every resample of persons, though each rate alone varies widely from person to person
    a = ASR(40, 24, 10, 10, torch.tensor([4] * 6 + [2] * 4))
    b = ASR(40, 4, 10, 10, torch.tensor([2] * 6 + [0] * 4))
    assert a.lead(b) == pytest.approx((0.5, 0.5, 0.5))
    lo, hi = b.interval()
    assert hi - lo > 0.2  # unpaired, the same data spread far wider
    # hand-worked: A hides one person's 4 draws that B does not, and nothing else differs
    c = ASR(40, 5, 10, 10, torch.tensor([4] + [0] * 8 + [1]))
    d = ASR(40, 1, 10, 10, torch.tensor([0] * 9 + [1]))
    diff, lo, hi = c.lead(d, draws=4000)
    assert diff == pytest.approx(0.1) and lo == 0.0 and 0.2 <= hi <= 0.3
    with pytest.raises(ValueError, match="same persons"):
        a.lead(ASR(8, 2, 2, 5, torch.tensor([2, 0])))
    with pytest.raises(ValueError, match="same persons"):
        a.lead(ASR(40, 24, 10, 10))


class StubDetector(PersonDetector):
    """Fixed candidates: three boxes on the person, one far away."""

    threshold = 0.5

    def candidates(self, images):
        boxes = torch.tensor([[0.0, 0, 10, 20], [1, 0, 11, 20], [0, 1, 10, 21], [50, 50, 60, 70]])
        scores = torch.tensor([2.0, 1.0, -3.0, 9.0]) * images.mean()
        return [Detections(boxes, scores) for _ in images]


def test_person_scores_take_the_top_overlapping_candidates_above_a_floor():
    det = StubDetector()
    img = torch.ones(1, 3, 8, 8)
    box = torch.tensor([[0.0, 0, 10, 20]])
    assert person_scores(det, img, box).item() == pytest.approx(1.5)  # 2 - 0.5; far box ignored
    # top 3 of (1.5, 0.5, -3.5) with the floor -1: (1.5 + 0.5 - 1) / 3
    assert person_scores(det, img, box, topk=3, kappa=1.0).item() == pytest.approx(1 / 3)
    assert person_scores(det, img, torch.tensor([[100.0, 100, 110, 120]]), kappa=2.0).item() == -2.0
