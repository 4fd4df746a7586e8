"""Detector protocol pieces: NMS, the CNN detector's targets and decoding, AP, weights I/O, and
the adapters for user detectors (randomly initialised stand-ins; nothing is downloaded)."""

import pytest
import torch
from torch import nn

from edgeguard.models.detectors import Detections, DetectorError, nms
from edgeguard.models.detectors.adapters import FasterRCNNAdapter, YOLOAdapter, load_detector
from edgeguard.models.detectors.cnn import CNNPersonDetector, TinyPersonNet, decode, targets
from edgeguard.models.detectors.train import (
    average_precision,
    evaluate_ap,
    load_cnn_detector,
    match_detections,
    matched_detections,
    save_detector,
)
from edgeguard.settings import data_root


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    out = nms(Detections(boxes, torch.tensor([0.5, 0.9, 0.3])), 0.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.3])


def test_targets_decode_back_to_the_boxes():
    boxes = [torch.tensor([[40.0, 30.0, 90.0, 150.0]])]
    pos, reg = targets(boxes, (224, 224))
    assert pos.any()
    raw = torch.zeros(1, 5, 28, 28)
    raw[:, 1:3] = torch.atanh(reg[:, :2].clamp(-0.999, 0.999))
    raw[:, 3:] = reg[:, 2:]
    dec, _ = decode(raw)
    got = dec[0][pos[0].flatten()]
    assert torch.allclose(got, boxes[0].expand_as(got), atol=1e-3)


def test_average_precision_hand_worked():
    # 3 persons; detections by score: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    ap = average_precision(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]), 3)
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    gt = torch.tensor([[0.0, 0, 10, 10]])
    tp = match_detections(
        torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11]]), torch.tensor([0.5, 0.9]), gt
    )
    assert tp.tolist() == [False, True]  # one person, matched once, by the higher score


def test_matched_detections_lowers_the_threshold_only_while_it_runs():
    from edgeguard.data.persons import PersonPhoto, PersonPhotos

    class Fixed:  # a detector with three fixed detections, of which the threshold keeps some
        threshold = 0.5

        def __call__(self, images):
            boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 11]])
            scores = torch.tensor([0.9, 0.6, 0.2])
            keep = scores >= self.threshold
            return [Detections(boxes[keep], scores[keep])]

    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    photos = PersonPhotos([PersonPhoto("a", "s", img, gt), PersonPhoto("b", "s", img, gt[:1])])
    det = Fixed()
    scores, matched, positives = matched_detections(det, photos, side=None, min_score=0.1)
    assert scores.tolist() == pytest.approx([0.9, 0.6, 0.2, 0.9, 0.6, 0.2])
    # photo b has no second person: its 0.6 detection is a false positive
    assert matched.tolist() == [True, True, False, True, False, False]
    assert positives == 3 and det.threshold == 0.5  # restored
    kept = matched_detections(det, photos, side=None, min_score=None)  # the detector's own 0.5
    assert kept[0].tolist() == pytest.approx([0.9, 0.6, 0.9, 0.6])
    assert evaluate_ap(det, photos, side=None, min_score=0.1) == pytest.approx(
        float(average_precision(scores, matched, positives))
    )


def test_cnn_detector_weights_round_trip_and_bad_files(tmp_path):
    det = CNNPersonDetector(TinyPersonNet(8).eval())
    path = save_detector(det, tmp_path / "d.safetensors")
    again = load_cnn_detector(path)
    x = torch.rand(1, 3, 64, 48)
    assert torch.equal(det.net(x), again.net(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DetectorError, match="not a readable safetensors"):
        load_cnn_detector(tmp_path / "bad.safetensors")
    with pytest.raises(DetectorError, match="not found"):
        load_cnn_detector(tmp_path / "missing.safetensors")
    # one model file format: it is an edgeguard model file, and a foreign model is refused
    from edgeguard.modelfile import load_model, save_model
    from edgeguard.models import build

    _, _, spec = load_model(path)
    assert spec["arch"] == {"name": "person_cnn", "kwargs": {"width": 8}}
    save_model(build("digits_cnn"), tmp_path / "digits.safetensors")
    with pytest.raises(DetectorError, match="not a person_cnn"):
        load_cnn_detector(tmp_path / "digits.safetensors")


def test_cnn_detector_reads_the_older_person_cnn_layout(tmp_path):
    from safetensors.torch import save_file

    net = TinyPersonNet(8).eval()
    old = tmp_path / "old.safetensors"
    save_file(
        net.state_dict(), str(old), metadata={"format": "edgeguard.person_cnn/1", "width": "8"}
    )
    x = torch.rand(1, 3, 64, 48)
    assert torch.equal(load_cnn_detector(old).net(x), net(x))


class FakeYOLOv5(nn.Module):
    """A random conv net with YOLOv5's inference layout [B, N, 5 + C] (probabilities)."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 5 + classes, 8, stride=8)

    def forward(self, x):
        out = self.conv(x).flatten(2).transpose(1, 2)  # [B, N, 5 + C]
        box = out[..., :4].abs() * 10 + 20
        return (torch.cat([box, torch.sigmoid(out[..., 4:])], -1), [])


class FakeYOLOv8(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4 + classes, 8, stride=8)

    def forward(self, x):
        out = self.conv(x).flatten(2)  # [B, 4 + C, N]
        return torch.cat([out[:, :4].abs() * 10 + 20, torch.sigmoid(out[:, 4:])], 1)


class FakeRCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, images):
        out = []
        for im in images:
            s = torch.sigmoid(self.conv(im[None]).mean((1, 2, 3)).expand(3) + torch.arange(3.0))
            out.append(
                {
                    "boxes": torch.tensor([[0.0, 0, 10, 20], [5, 5, 20, 40], [1, 1, 8, 8]]),
                    "labels": torch.tensor([1, 1, 3]),
                    "scores": s,
                }
            )
        return out


@pytest.mark.parametrize("fake", [FakeYOLOv5, FakeYOLOv8])
@pytest.mark.parametrize("score", ["obj*cls", "obj", "cls"])
def test_yolo_adapters_pass_gradients_to_the_pixels(fake, score):
    torch.manual_seed(0)
    det = YOLOAdapter(fake().eval(), score=score, threshold=0.0)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    cand = det.candidates(x)
    assert len(cand) == 2 and cand[0].boxes.shape == (64, 4)
    torch.stack([c.scores.max() for c in cand]).sum().backward()
    assert x.grad.abs().sum() > 0
    assert len(det(x.detach())[0]) >= 1


def test_faster_rcnn_adapter_keeps_person_labels_with_gradients():
    det = FasterRCNNAdapter(FakeRCNN().eval(), threshold=0.0)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    cand = det.candidates(x)[0]
    assert len(cand) == 2  # label 3 is not a person
    cand.scores.sum().backward()
    assert x.grad.abs().sum() > 0


def test_load_detector_reads_torchscript_and_refuses_untrusted_pickles(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.trace(FakeYOLOv8().eval(), torch.rand(1, 3, 64, 64))
    scripted.save(str(tmp_path / "y.torchscript"))
    det = load_detector(tmp_path / "y.torchscript", "yolo", threshold=0.0)
    assert len(det.candidates(torch.rand(1, 3, 64, 64))[0].boxes) == 64
    torch.save({"model": FakeYOLOv8()}, tmp_path / "y.pt")
    with pytest.raises(DetectorError, match="trust_pickle"):
        load_detector(tmp_path / "y.pt", "yolo")
    assert isinstance(load_detector(tmp_path / "y.pt", "yolo", trust_pickle=True), YOLOAdapter)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(DetectorError, match="not a detector module"):
        load_detector(tmp_path / "w.pt", "yolo", trust_pickle=True)
    with pytest.raises(DetectorError, match="not found"):
        load_detector(tmp_path / "nope.pt", "yolo")
    with pytest.raises(DetectorError, match="kind"):
        load_detector(tmp_path / "y.pt", "detr")
    with pytest.raises(DetectorError, match=r"\[B, N, 5 \+ C\]"):
        YOLOAdapter(nn.Identity()).candidates(torch.rand(1, 3, 8, 8))


PERSONS = data_root() / "persons"  # EDGEGUARD_DATA, default ../shared/data


@pytest.mark.skipif(
    not (PERSONS / "manifest.csv").is_file(), reason=f"{PERSONS} absent (EDGEGUARD_DATA)"
)
def test_shipped_cnn_detector_finds_held_out_persons():
    from edgeguard.data.persons import load_persons
    from edgeguard.models.detectors.train import evaluate_ap

    photos = load_persons(PERSONS, ["pennfudan", "inria"])
    held_out = photos.split(0.3, seed=0)[1]  # the split the shipped weights did not train on
    assert evaluate_ap(load_cnn_detector(), held_out) > 0.6


def test_detector_specs_say_what_was_wrong():
    from edgeguard.models.detectors import get_detector

    with pytest.raises(DetectorError, match="unknown detector 'detr'; available: centernet"):
        get_detector("detr")
    with pytest.raises(DetectorError, match="detector 'hog' takes no file, got 'hog:x.pt'"):
        get_detector("hog:x.pt")
    with pytest.raises(DetectorError, match="detector 'yolo' needs a file: yolo:PATH"):
        get_detector("yolo")


def test_flat_scores_send_only_the_top_candidates_to_nms():
    """A detector whose scores went flat (e.g. badly pruned) scores every cell alike: only
    ``pre_nms`` of them reach the quadratic NMS."""
    from edgeguard.models.detectors.base import Detections, PersonDetector, top_k

    class Flat(PersonDetector):
        pre_nms = 50

        def candidates(self, images):
            xy = torch.rand(20_000, 2) * 400
            boxes = torch.cat([xy, xy + 30], 1)
            return [Detections(boxes, torch.linspace(0.5, 0.6, 20_000))]

    (found,) = Flat()(torch.zeros(1, 3, 8, 8))
    assert 0 < len(found) <= 50 and float(found.scores.min()) > 0.599
    det = Detections(torch.zeros(3, 4), torch.tensor([0.1, 0.3, 0.2]))
    assert top_k(det, 2).scores.tolist() == pytest.approx([0.3, 0.2]) and top_k(det, None) is det
