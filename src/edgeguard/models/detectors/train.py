"""Training and evaluation of the CNN person detector on photographs with person boxes.

Augmentation per sample: random rescaling (persons 50-200 px tall), a random 256x256 crop (padded
with the image's mean colour when smaller), horizontal flip, brightness/contrast/saturation jitter.
Evaluation: VOC-style average precision at IoU 0.5 (all-point interpolation), every annotated person
a positive, on photos resized so their longer side is ``eval_side``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.persons import PersonPhoto, PersonPhotos
from .base import DetectorError, box_iou
from .cnn import CNNPersonDetector, TinyPersonNet, detection_loss, targets

log = logging.getLogger(__name__)
CROP = 224
WEIGHTS = Path(__file__).with_name("person_cnn.safetensors")


def augment(photo: PersonPhoto, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """One random training view: (image ``[3, 224, 224]``, boxes ``[K, 4]`` clipped to it)."""
    img = photo.float_image()
    boxes = photo.boxes.clone()
    heights = boxes[:, 3] - boxes[:, 1]
    scale = rng.uniform(50, 200) / float(heights.median())
    h, w = img.shape[1:]
    nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
    img = F.interpolate(
        img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    canvas = img.mean((1, 2), keepdim=True).expand(3, max(nh, CROP), max(nw, CROP)).clone()
    oy, ox = rng.randint(0, max(0, CROP - nh)), rng.randint(0, max(0, CROP - nw))
    canvas[:, oy : oy + nh, ox : ox + nw] = img
    boxes = boxes + torch.tensor([ox, oy, ox, oy])
    # a crop that holds a person's centre when possible
    ch, cw = canvas.shape[1:]
    k = rng.randrange(len(boxes))
    cx, cy = float(boxes[k, 0] + boxes[k, 2]) / 2, float(boxes[k, 1] + boxes[k, 3]) / 2
    x0 = min(max(0, round(cx - rng.uniform(0.2, 0.8) * CROP)), cw - CROP)
    y0 = min(max(0, round(cy - rng.uniform(0.2, 0.8) * CROP)), ch - CROP)
    crop = canvas[:, y0 : y0 + CROP, x0 : x0 + CROP]
    boxes = boxes - torch.tensor([x0, y0, x0, y0])
    clipped = boxes.clamp(0, CROP)
    # keep persons whose visible part is at least half of them
    full = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    vis = (clipped[:, 2:] - clipped[:, :2]).clamp_min(0).prod(1)
    boxes = clipped[vis >= 0.5 * full]
    if rng.random() < 0.5:
        crop = crop.flip(2)
        boxes = torch.stack([CROP - boxes[:, 2], boxes[:, 1], CROP - boxes[:, 0], boxes[:, 3]], 1)
    grey = crop.mean(0, keepdim=True)
    sat = rng.uniform(0.7, 1.3)
    crop = grey + (crop - grey) * sat
    crop = (crop - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.12, 0.12)
    return crop.clamp(0, 1), boxes


def train_person_detector(
    photos: PersonPhotos,
    epochs: int = 120,
    batch: int = 16,
    lr: float = 3e-3,
    width: int = 16,
    seed: int = 0,
    log_every: int = 10,
) -> CNNPersonDetector:
    """Train a :class:`TinyPersonNet` on ``photos`` (AdamW, cosine schedule); one epoch is one view
    of every photo."""
    if len(photos) == 0:
        raise DetectorError("no training photos with person boxes")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = TinyPersonNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(photos) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    # Views never need persons taller than 220 px: shrink big photos once, not in every view.
    items = [shrink_photo(p, 220) for p in photos]
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        rng.shuffle(items)
        net.train()
        for i in range(0, len(items), batch):
            views = [augment(p, rng) for p in items[i : i + batch]]
            x = torch.stack([v[0] for v in views])
            pos, reg = targets([v[1] for v in views], (CROP, CROP))
            loss = detection_loss(net(x), pos, reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(views)
        if (epoch + 1) % log_every == 0 or epoch == 0 or epoch + 1 == epochs:
            log.info(
                "detector epoch %d/%d  loss %.4f  %.1f s",
                epoch + 1,
                epochs,
                total / len(items),
                time.perf_counter() - t0,
            )
    return CNNPersonDetector(net.eval())


def shrink_photo(photo: PersonPhoto, max_height: float) -> PersonPhoto:
    """The photo scaled down (never up) so its median person is at most ``max_height`` px tall."""
    s = max_height / float((photo.boxes[:, 3] - photo.boxes[:, 1]).median())
    if s >= 1:
        return photo
    img, boxes = resize_photo(photo, round(max(photo.image.shape[1:]) * s))
    return PersonPhoto(photo.name, photo.source, (img * 255).round().to(torch.uint8), boxes)


def resize_photo(photo: PersonPhoto, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image ``[3, h, w]`` with its longer side ``side``, boxes scaled alike)."""
    img = photo.float_image()
    h, w = img.shape[1:]
    s = side / max(h, w)
    nh, nw = round(h * s), round(w * s)
    img = F.interpolate(
        img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    return img, photo.boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])


def average_precision(scores: torch.Tensor, matched: torch.Tensor, positives: int) -> float:
    """VOC all-point AP from detections' ``scores [D]`` and whether each is a true positive."""
    if positives == 0:
        return math.nan
    order = torch.argsort(scores, descending=True)
    tp = matched[order].double()
    recall = tp.cumsum(0) / positives
    precision = tp.cumsum(0) / torch.arange(1, len(tp) + 1, dtype=torch.float64)
    r = torch.cat([torch.zeros(1), recall, torch.ones(1)]).double()
    p = torch.cat([torch.zeros(1), precision, torch.zeros(1)]).double()
    for i in range(len(p) - 2, -1, -1):  # precision envelope
        p[i] = max(p[i], p[i + 1])
    idx = torch.nonzero(r[1:] != r[:-1]).squeeze(1)
    return float(((r[idx + 1] - r[idx]) * p[idx + 1]).sum())


def match_detections(
    det_boxes: torch.Tensor, det_scores: torch.Tensor, gt: torch.Tensor, iou: float = 0.5
) -> torch.Tensor:
    """Greedy VOC matching (highest score first, each person matched once): true positive flags."""
    tp = torch.zeros(len(det_boxes), dtype=torch.bool)
    if len(det_boxes) == 0 or len(gt) == 0:
        return tp
    ious = box_iou(det_boxes, gt)
    used = torch.zeros(len(gt), dtype=torch.bool)
    for i in torch.argsort(det_scores, descending=True).tolist():
        best = torch.where(used, torch.full_like(ious[i], -1), ious[i]).max(0)
        if float(best.values) >= iou:
            tp[i] = True
            used[best.indices] = True
    return tp


def evaluate_ap(
    detector,
    photos: PersonPhotos,
    side: int | None = 320,
    iou: float = 0.5,
    min_score: float | None = -4.0,
) -> float:
    """AP@``iou`` of ``detector`` on ``photos`` (every annotated person a positive; ``side``: the
    photos' longer side for the detector, None: as they are).  The whole
    precision-recall curve needs low-scoring detections too: the detector's threshold is lowered to
    ``min_score`` during the evaluation (None keeps it)."""
    return average_precision(*matched_detections(detector, photos, side, iou, min_score))


def matched_detections(
    detector,
    photos: PersonPhotos,
    side: int | None = 320,
    iou: float = 0.5,
    min_score: float | None = -4.0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(scores [N], matched [N] bool, positives)``: every detection of ``detector`` on
    ``photos`` (arguments as :func:`evaluate_ap`), whether it matches an annotated person at IoU
    >= ``iou`` (each person once, highest score first), and the number of annotated persons."""
    saved = detector.threshold
    if min_score is not None:
        detector.threshold = min(saved, min_score)
    scores, matched, positives = [], [], 0
    try:
        with torch.no_grad():
            for photo in photos:
                img, gt = resize_photo(photo, side) if side else (photo.float_image(), photo.boxes)
                det = detector(img[None])[0]
                scores.append(det.scores)
                matched.append(match_detections(det.boxes, det.scores, gt, iou))
                positives += len(gt)
    finally:
        detector.threshold = saved
    return torch.cat(scores), torch.cat(matched), positives


LEGACY_FORMAT = "edgeguard.person_cnn/1"  # before every model shared edgeguard.modelfile's format


def save_detector(detector: CNNPersonDetector, path: str | Path) -> Path:
    """Save the detector's network as an edgeguard model file (architecture ``person_cnn``)."""
    from ...modelfile import save_model

    width = detector.net.head.in_channels // 4
    detector.net.edgeguard_arch = {"name": "person_cnn", "kwargs": {"width": width}}
    return save_model(detector.net, path, extra={"threshold": detector.threshold})


def load_cnn_detector(path: str | Path | None = None, threshold: float = -1.5) -> CNNPersonDetector:
    """The CNN person detector from a model file (default: the weights shipped with the package),
    as :func:`save_detector` writes it or in the older ``edgeguard.person_cnn/1`` layout.  A
    missing, unreadable or foreign file gives a :class:`DetectorError` naming it."""
    from safetensors import SafetensorError, safe_open

    from ...errors import EdgeguardError
    from ...modelfile import load_model

    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise DetectorError(f"detector weights {path} not found")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            legacy = meta.get("format") == LEGACY_FORMAT
            state = {k: fh.get_tensor(k) for k in fh.keys()} if legacy else {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise DetectorError(f"{path} is not a readable safetensors file: {err}") from None
    if legacy:
        net = TinyPersonNet(int(meta.get("width", 16)))
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise DetectorError(f"{path}: weights do not fit the detector: {err}") from None
        return CNNPersonDetector(net.eval(), threshold)
    try:
        net, _, spec = load_model(path)
    except EdgeguardError as err:
        raise DetectorError(f"{path} is not an edgeguard person detector: {err}") from None
    if (spec.get("arch") or {}).get("name") != "person_cnn":
        raise DetectorError(
            f"{path} holds a {(spec.get('arch') or {}).get('name')!r} model, not a person_cnn"
        )
    return CNNPersonDetector(net.eval(), threshold)
