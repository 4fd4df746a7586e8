"""AdversarialTShirt's optimisation loop on a hand-made differentiable detector."""

import pytest
import torch

from edgeguard.attacks.patch import AdversarialTShirt, TShirtConfig, detected
from edgeguard.attacks.patch.placement import apply_patch, person_crops
from edgeguard.attacks.patch.transforms import EOT
from edgeguard.data.persons import PersonPhoto, PersonPhotos
from edgeguard.models.detectors import Detections, PersonDetector


class GreenTorso(PersonDetector):
    """One candidate per image, the person box; its score is the mean green of the image's torso
    rows minus the mean red (so a red torso hides the person)."""

    threshold = 0.0

    def __init__(self, box: torch.Tensor) -> None:
        super().__init__()
        self.box = box

    def candidates(self, images):
        x1, y1, x2, y2 = (int(v) for v in self.box.tolist())
        torso = images[:, :, y1 + (y2 - y1) // 5 : y1 + 3 * (y2 - y1) // 5, x1:x2]
        scores = torso[:, 1].mean((1, 2)) - torso[:, 0].mean((1, 2))
        return [Detections(self.box[None], s[None]) for s in scores]


def crops():
    img = torch.zeros(3, 300, 200, dtype=torch.uint8)
    img[1] = 200  # a green scene: the person is detected without a patch
    boxes = torch.tensor([[60.0, 40.0, 140.0, 240.0]])
    photos = PersonPhotos([PersonPhoto("a.png", "s", img, boxes)])
    return person_crops(photos, scale=1.0, shape="torso")[0]


def _config(**change) -> TShirtConfig:
    """A small rigid patch, the attack loss alone (no TV or printability), the best window."""
    base = dict(batch=1, size=(20, 14), eot=EOT.rigid(), tv=0.0, nps=0.0, topk=1, kappa=5.0)
    return TShirtConfig(**(base | change))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_patch_learns_to_hide_the_person_from_a_detector(schedule):
    c = crops()
    before = c.images.clone()
    det = GreenTorso(c.boxes[0])
    assert detected(det, c.images, c.boxes).all()
    res = AdversarialTShirt(det, _config(steps=40, samples=2, schedule=schedule)).train(c)
    assert res.patch.shape == (3, 20, 14)
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < first - 0.1  # the loss falls
    # the patch turns red and drops green, as the detector's score asks
    assert res.patch[0].mean() > 0.8 and res.patch[1].mean() < 0.2
    assert not detected(det, apply_patch(c, res.patch, EOT.none()), c.boxes).any()
    assert torch.equal(c.images, before)  # the caller's crops are not modified


class Shifted(GreenTorso):
    """GreenTorso with every score lowered by ``shift``: the easy detector of an ensemble."""

    def __init__(self, box: torch.Tensor, shift: float) -> None:
        super().__init__(box)
        self.shift = shift

    def candidates(self, images):
        return [Detections(d.boxes, d.scores - self.shift) for d in super().candidates(images)]


@pytest.mark.parametrize("weighting", ["minmax", "average"])
def test_minmax_weights_move_to_the_detector_that_still_sees_people(weighting):
    c = crops()
    hard, easy = GreenTorso(c.boxes[0]), Shifted(c.boxes[0], 0.3)
    res = AdversarialTShirt([hard, easy], _config(steps=15, samples=1, weighting=weighting)).train(
        c
    )
    gaps = [h["detector_losses"][0] - h["detector_losses"][1] for h in res.history]
    assert all(abs(g - 0.3) < 1e-3 for g in gaps)  # the easy detector's loss is 0.3 lower
    if weighting == "average":
        assert res.weights == [0.5, 0.5]
    else:  # at equilibrium w_hard - w_easy = gap / gamma, capped at 1 by the simplex
        assert res.weights[0] > 0.95 and res.weights[1] < 0.05


class Offsets(GreenTorso):
    """Near-constant gaps: image i of a batch scores ``offsets[i]`` (plus a trace of GreenTorso's
    score, so the loss has a gradient)."""

    def __init__(self, box: torch.Tensor, offsets: list[float]) -> None:
        super().__init__(box)
        self.offsets = torch.tensor(offsets)

    def candidates(self, images):
        return [
            Detections(d.boxes, 1e-3 * d.scores + self.offsets[i])
            for i, d in enumerate(super().candidates(images))
        ]


@pytest.mark.parametrize("ascend", ["loss", "found"])
def test_minmax_weights_ascend_the_losses_or_the_share_still_found(ascend):
    c = crops()
    # two draws of the one wearer a step: "wide" has the larger mean gap (0.95) but finds one of
    # two; "narrow" has a small gap (0.1) and finds both
    wide, narrow = Offsets(c.boxes[0], [2.0, -0.1]), Offsets(c.boxes[0], [0.1, 0.1])
    cfg = _config(steps=10, samples=2, weighting="minmax", ascend=ascend)
    res = AdversarialTShirt([wide, narrow], cfg).train(c)
    assert res.history[-1]["found"] == [0.5, 1.0]
    assert res.history[-1]["detector_losses"] == pytest.approx([0.95, 0.1], abs=1e-2)
    # at equilibrium w_a - w_b = (a_a - a_b) / gamma (0.85 / 0.2 or 0.5 / 0.2), capped by the simplex
    heavier = 0 if ascend == "loss" else 1
    assert res.weights[heavier] > 0.95


class SceneColour(GreenTorso):
    """Finds the person of a green scene (gap +0.2), never that of a blue one (gap -0.4), whatever
    the patch (plus a trace of GreenTorso's score, for a gradient)."""

    def candidates(self, images):
        green = images[:, 1].mean((1, 2)) > images[:, 2].mean((1, 2))
        return [
            Detections(d.boxes, 1e-3 * d.scores + (0.2 if g else -0.4))
            for d, g in zip(super().candidates(images), green, strict=True)
        ]


@pytest.mark.parametrize("found_only", [False, True])
def test_found_only_counts_the_persons_each_detector_finds_without_a_patch(found_only):
    photos = []
    for name, channel in (("green.png", 1), ("blue.png", 2)):
        img = torch.zeros(3, 300, 200, dtype=torch.uint8)
        img[channel] = 200
        photos.append(PersonPhoto(name, "s", img, torch.tensor([[60.0, 40.0, 140.0, 240.0]])))
    c = person_crops(PersonPhotos(photos), scale=1.0, shape="torso")[0]
    det = SceneColour(c.boxes[0])
    assert detected(det, c.images, c.boxes).tolist() == [True, False]
    cfg = _config(steps=3, batch=2, samples=2, found_only=found_only)
    res = AdversarialTShirt(det, cfg).train(c)
    for h in res.history:  # both crops every step, two draws each
        if found_only:  # only the green scene's wearer, found without the patch, counts
            assert h["detector_losses"][0] == pytest.approx(0.2, abs=1e-2)
            assert h["found"] == [1.0]
        else:
            assert h["detector_losses"][0] == pytest.approx(-0.1, abs=1e-2)
            assert h["found"] == [0.5]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="schedule must be 'constant' or 'cosine'"):
        TShirtConfig(schedule="linear").validate()
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        TShirtConfig(steps=0).validate()
    with pytest.raises(ValueError, match=r"iou must be in \(0, 1\]"):
        TShirtConfig(iou=0.0).validate()
    with pytest.raises(ValueError, match="ascend must be 'loss' or 'found'"):
        TShirtConfig(ascend="asr").validate()
    with pytest.raises(ValueError, match="gamma >= 0"):
        TShirtConfig(gamma=-1.0).validate()
    with pytest.raises(ValueError, match="need PersonDetector instances"):
        AdversarialTShirt([], TShirtConfig())


def test_person_rows_follow_the_dressed_batch_order():
    from edgeguard.attacks.patch.tshirt import _person_rows

    # items with 2, 0 and 3 wearers (all-wearers rows 0-1 and 2-4); batch = items 2 then 0, two
    # draws each: dress emits item 2's image twice (its 3 wearers each time), then item 0's twice
    rows = _person_rows(torch.tensor([2, 0]), torch.tensor([2, 0, 3]), 2)
    assert rows.tolist() == [2, 3, 4, 2, 3, 4, 0, 1, 0, 1]
