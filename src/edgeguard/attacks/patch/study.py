"""Building blocks of the T-shirt workflow (:mod:`.workflow` assembles them): person crops of a photo
folder split into train / held-out, training detectors' fast views, patch evaluation on held-out
(person, transformation) samples against several detectors, figures."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ...data.errors import DatasetError
from ...data.persons import PersonPhotos, load_persons
from ...models.detectors import HOGPersonDetector, PersonDetector, box_iou, get_detector
from ...models.detectors.opencv import OpenCVHOGBlackBox
from ...report.plots import detection_grid
from ..base import AttackError
from .loss import detected
from .metrics import ASR, attack_success, found_without_patch
from .placement import PersonCrops, person_crops
from .scenes import PersonScenes, person_scenes
from .transforms import EOT, ColorTransform

Detect = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CropSplit:
    train: PersonCrops
    test: PersonCrops
    photos: tuple[int, int]  # train, held-out photos
    skipped: dict[str, int]  # persons not usable (small, wide), images without boxes
    held_out_photos: PersonPhotos  # the whole held-out photos (e.g. for a detector's AP)


def load_crops(
    root: str | Path,
    sources: list[str] | None = None,
    held_out: float = 0.3,
    seed: int = 0,
    scale: float = 1.0,
    limit: int | None = None,
    shape: str = "square",
    fold: tuple[int, int] | None = None,
) -> CropSplit:
    """Person crops of the train and held-out photos (split by source with ``seed``); ``shape``
    of the patch: ``"square"`` or ``"torso"`` (see :func:`~.placement.torso_patch`); ``fold``
    ``(i, k)``: fold ``i`` of a ``k``-fold cross-validation instead of the ``held_out`` split."""
    photos, train, test = _split_photos(root, sources, held_out, seed, limit, fold)
    tr, s1 = person_crops(train, scale=scale, shape=shape)
    te, s2 = person_crops(test, scale=scale, shape=shape)
    return CropSplit(tr, te, (len(train), len(test)), _skipped(s1, s2, photos), test)


def _split_photos(root, sources, held_out, seed, limit, fold):
    """(all photos, train photos, held-out photos): the split by source, or fold ``(i, k)``."""
    if fold is not None and not 0 <= fold[0] < fold[1]:
        raise AttackError(f"fold index must be in [0, {fold[1]}), got {fold[0]}")
    photos = load_persons(root, sources, limit)
    train, test = (
        photos.split(held_out, seed) if fold is None else photos.folds(fold[1], seed)[fold[0]]
    )
    return photos, train, test


def _skipped(s1: dict[str, int], s2: dict[str, int], photos: PersonPhotos) -> dict[str, int]:
    return {k: s1[k] + s2[k] for k in s1} | {"no boxes": len(photos.skipped)}


COCO_DETECTORS = ("centernet", "nanodet")


@dataclass
class SceneSplit:
    """Whole-photo scenes of the train and held-out photos (see :mod:`.scenes`)."""

    train: PersonScenes
    test: PersonScenes
    skipped: dict[str, int]
    held_out_photos: PersonPhotos


def load_scenes(
    root: str | Path,
    sources: list[str] | None = None,
    held_out: float = 0.3,
    seed: int = 0,
    scale: float = 1.0,
    limit: int | None = None,
    shape: str = "torso",
    fold: tuple[int, int] | None = None,
    size: tuple[int, int] = (416, 416),
) -> SceneSplit:
    """Scenes (whole photos, every usable person a wearer) of the train and held-out photos, split
    as :func:`load_crops` splits them."""
    photos, train, test = _split_photos(root, sources, held_out, seed, limit, fold)
    tr, s1 = person_scenes(train, size, scale, shape)
    te, s2 = person_scenes(test, size, scale, shape)
    return SceneSplit(tr, te, _skipped(s1, s2, photos), test)


def training_view(detector: PersonDetector) -> PersonDetector:
    """The detector as used inside the optimisation loop: HOG on the 4 pyramid levels around the
    crops' person scale (100 px), not 7 (evaluation always uses the full pyramid)."""
    if isinstance(detector, HOGPersonDetector):
        fast = copy.copy(detector)
        fast.max_levels = 4
        return fast
    return detector


def detector_checks(
    specs: list[str],
    trust_pickle: bool = False,
    iou: float = 0.3,
    loaded: Mapping[str, PersonDetector] | None = None,
) -> dict[str, Detect]:
    """``is_detected(images, boxes)`` per detector spec (a person is found when a detection has
    IoU >= ``iou`` with its box); ``opencv`` is OpenCV's own HOG; ``loaded``: detectors already
    built, by spec."""
    out: dict[str, Detect] = {}
    for spec in specs:
        if spec == "opencv":
            black_box = OpenCVHOGBlackBox()
            out[spec] = lambda im, bx, b=black_box: b.detected(im, bx, iou)
        else:
            det = (loaded or {}).get(spec) or get_detector(spec, trust_pickle)
            out[spec] = lambda im, bx, d=det: detected(d, im, bx, iou)
    return out


def only_detected(
    check: Detect, crops: PersonCrops | PersonScenes, batch: int = 32
) -> PersonCrops | PersonScenes:
    """The crops whose person (the scenes with a wearer) the detector finds without a patch: the
    ones worth attacking."""
    _, _, keep = found_without_patch(check, crops, batch)
    return crops.subset(keep.nonzero().squeeze(1))


def evaluate_patches(
    patches: Mapping[str, torch.Tensor],
    checks: Mapping[str, Detect],
    crops: PersonCrops | PersonScenes,
    eot: EOT,
    samples: int = 4,
    seed: int = 1234,
    color: ColorTransform | None = None,
) -> dict[tuple[str, str], ASR]:
    """ASR of every patch against every detector on the same held-out draws (crops or scenes)."""
    return {
        (p, d): attack_success(check, crops, patch, eot, color, samples, seed)
        for p, patch in patches.items()
        for d, check in checks.items()
    }


def detection_examples(
    detector: PersonDetector,
    crops: PersonCrops | PersonScenes,
    patch: torch.Tensor,
    eot: EOT,
    path: Path,
    n: int = 6,
    seed: int = 7,
    iou: float = 0.3,
) -> Path:
    """Before/after figure: ``n`` held-out crops (or whole photos) without and with the patch, with
    the detector's boxes (green: every wearer found at IoU >= ``iou``, red: some hidden)."""
    part = crops.subset(range(min(n, len(crops))))
    with torch.no_grad():
        after, _ = part.dress(patch, eot, None, 1, torch.Generator().manual_seed(seed))
        images = torch.cat([part.images, after])
        dets = detector(images)
    wearers = [b.reshape(-1, 4) for b in part.boxes] * 2
    found = [
        bool(len(d)) and bool((box_iou(w, d.boxes) >= iou).any(1).all())
        for d, w in zip(dets, wearers, strict=True)
    ]
    titles = ["clean"] * len(part) + ["patched"] * len(part)
    return detection_grid(images, [d.boxes for d in dets], found, path, titles)


def load_patch(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A patch ``[3, h, w]`` in [0, 1] from the safetensors file ``tshirt train`` writes (its own
    size), or from a PNG/JPEG such as :func:`~edgeguard.report.plots.save_patch` writes, area-resized
    to ``size`` (h, w) (exact for a print-resolution PNG: it is a nearest-neighbour upscale by an
    integer factor)."""
    import cv2
    import torch.nn.functional as F

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"patch file {p} not found")
    if p.suffix == ".safetensors":
        from ...modelfile import load_patch_file

        return load_patch_file(p)[0]
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise AttackError(f"cannot read the patch image {p} (expected .safetensors, PNG or JPEG)")
    t = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(t, size=size, mode="area")[0]
