"""The HOG person detector port against OpenCV's own HOGDescriptor on the real photographs."""

import csv

import cv2
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgeguard.models.detectors import (
    Detections,
    DetectorError,
    HOGPersonDetector,
    box_iou,
    group_rectangles,
)
from edgeguard.models.detectors.hog import descriptor, fast_atan2_deg
from edgeguard.settings import data_root

PERSONS = data_root() / "persons"  # EDGEGUARD_DATA, default ../shared/data
needs_photos = pytest.mark.skipif(
    not (PERSONS / "manifest.csv").is_file(), reason=f"{PERSONS} absent (EDGEGUARD_DATA)"
)


def photos(k: int, prefix: str = "") -> list[np.ndarray]:
    with open(PERSONS / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["file"].startswith(prefix)]
    step = max(1, len(rows) // k)
    return [cv2.imread(str(PERSONS / "images" / r["file"])) for r in rows[::step][:k]]


def to_tensor(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float()[None] / 255


@pytest.fixture(scope="module")
def opencv_hog():
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    return hog


def test_fast_atan2_is_opencvs():
    g = torch.Generator().manual_seed(0)
    y, x = torch.randn(2, 10_000, generator=g) * torch.tensor([[1.0], [30.0]])
    ref = cv2.phase(x.numpy(), y.numpy(), angleInDegrees=True).flatten()
    assert np.abs(fast_atan2_deg(y, x).numpy() - ref).max() < 1e-3


@needs_photos
def test_descriptor_equals_hog_compute_on_photo_windows(opencv_hog):
    for img in photos(6):
        h, w = img.shape[:2]
        for y, x in ((0, 0), (h - 128, w - 64), ((h - 128) // 2, (w - 64) // 3)):
            crop = np.ascontiguousarray(img[y : y + 128, x : x + 64])
            ref = opencv_hog.compute(crop).flatten()
            assert np.abs(descriptor(to_tensor(crop))[0].numpy() - ref).max() < 1e-4


@needs_photos
def test_window_scores_equal_hog_detect_within_1e3(opencv_hog):
    det = HOGPersonDetector()
    for img in photos(4, "pennfudan") + photos(2, "coco"):
        locs, weights = opencv_hog.detect(img, hitThreshold=-1e9, winStride=(8, 8), padding=(8, 8))
        scores, tl = det.window_scores(to_tensor(img))
        ours = {
            tuple(p): float(s)
            for p, s in zip(tl.reshape(-1, 2).tolist(), scores[0].flatten(), strict=True)
        }
        assert len(ours) == len(locs)
        diff = [
            abs(ours[(int(x), int(y))] - float(w))
            for (x, y), w in zip(locs, weights.flatten(), strict=True)
        ]
        assert max(diff) < 1e-3


@needs_photos
def test_multiscale_detections_match_detect_multiscale(opencv_hog):
    det = HOGPersonDetector()
    for img in photos(4, "pennfudan"):
        rects, _ = opencv_hog.detectMultiScale(img, winStride=(8, 8), padding=(8, 8), scale=1.05)
        with torch.no_grad():
            ours = det(to_tensor(img))[0]
        assert len(ours) == len(rects)
        if len(rects):
            ref = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rects], dtype=torch.float32)
            # pyramid levels are resized in float here, with fixed-point in OpenCV: boxes agree closely
            assert (box_iou(ref, ours.boxes).max(1).values > 0.85).all()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(20, 40)),
        min_size=1,
        max_size=25,
    ),
    st.integers(1, 3),
)
@example([(0, 0, 20), (0, 0, 21)], 1)  # a mean of 20.5: OpenCV rounds half to even
def test_group_rectangles_equals_opencv(rects, threshold):
    boxes = torch.tensor([[x, y, x + s, y + 2 * s] for x, y, s in rects], dtype=torch.float32)
    ours = group_rectangles(Detections(boxes, torch.ones(len(boxes))), threshold)
    ref, _ = cv2.groupRectangles([[x, y, s, 2 * s] for x, y, s in rects], threshold, 0.2)
    ref = sorted(tuple(int(v) for v in r) for r in (ref if len(ref) else []))
    got = sorted((int(a), int(b), int(c - a), int(d - b)) for a, b, c, d in ours.boxes.tolist())
    assert got == ref


def test_scores_are_differentiable_and_bad_input_is_refused():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 144, 80, generator=g).requires_grad_(True)
    det = HOGPersonDetector()
    cand = det.candidates(img)[0]
    cand.scores.max().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with pytest.raises(DetectorError, match=r"\[B, 3, H, W\]"):
        det(torch.rand(3, 128, 64))
    with pytest.raises(DetectorError, match="128x64"):
        descriptor(torch.rand(1, 3, 100, 64))
    with pytest.raises(ValueError, match="padding"):
        HOGPersonDetector(padding=5)
