"""Adversarial T-shirt (Xu et al., arXiv 1910.11099): a patch optimised over a distribution of
cloth deformations (TPS) and photographic transformations (EOT) to hide the wearer from person
detectors; with several detectors, min-max weights (Wang et al. 2021) instead of an average.

The attack loss of detector k on an image is the mean of its ``topk`` best person scores among the
candidate boxes that overlap the person (IoU >= ``iou``), relative to its threshold and floored at
``-kappa`` (a window already below by a margin stops pulling): ``f_k = mean max(s - threshold,
-kappa)``.  The patch
minimises ``sum_k w_k mean(f_k) + tv * TV + nps * NPS``, with ``w`` uniform (``"average"``) or
moved toward the detector that still sees people (``"minmax"``).

Gradient-free: :class:`ZOTShirt` optimises the same objective from the scores of a black box
(e.g. OpenCV's own ``HOGDescriptor.detectMultiScale``) with random-direction estimates on a
low-resolution parameterisation of the patch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...models.detectors import PersonDetector, box_iou
from ..base import AttackError
from ..minmax import MinMaxWeights
from ..zo.estimators import random_estimate
from .placement import PersonCrops
from .printability import default_palette, non_printability, total_variation
from .scenes import PersonScenes
from .transforms import EOT, ColorTransform

log = logging.getLogger(__name__)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, boxes) -> [N] scores


Boxes = torch.Tensor | Sequence[torch.Tensor]  # [N, 4] one person per image, or [k, 4] per image


def _per_image(boxes: Boxes) -> list[torch.Tensor]:
    return (
        [b[None] for b in boxes]
        if isinstance(boxes, torch.Tensor)
        else [b.reshape(-1, 4) for b in boxes]
    )


def person_scores(
    detector: PersonDetector,
    images: torch.Tensor,
    boxes: Boxes,
    iou: float = 0.3,
    topk: int = 1,
    kappa: float = math.inf,
) -> torch.Tensor:
    """``[P]`` per person (image-major): the mean of the ``topk`` best candidate scores (minus the
    detector's threshold, each floored at ``-kappa``) among the candidate boxes with IoU >= ``iou``
    with the person's box; ``-kappa`` where none overlaps.  ``boxes``: ``[N, 4]`` (one person per
    image, as crops) or a ``[k, 4]`` tensor per image (scenes).  ``topk = 1``: the best score.  More
    than one matters for detectors that group windows (OpenCV's HOG keeps a cluster of at least 3)."""
    out = []
    floor = torch.tensor(-kappa)
    for cand, person_boxes in zip(detector.candidates(images), _per_image(boxes), strict=True):
        if len(person_boxes) == 0:
            continue
        near_all = box_iou(person_boxes, cand.boxes.detach()) >= iou
        for near in near_all:
            s = cand.scores[near] - detector.threshold
            if s.numel() == 0:
                out.append(floor)
                continue
            top = s.topk(min(topk, s.numel())).values
            out.append(torch.maximum(top, floor).mean())
    return torch.stack(out) if out else torch.zeros(0)


def detected(
    detector: PersonDetector, images: torch.Tensor, boxes: Boxes, iou: float = 0.3
) -> torch.Tensor:
    """``[P]`` bool per person (image-major): a final detection (after threshold and grouping) has
    IoU >= ``iou`` with the person's box (``boxes`` as in :func:`person_scores`)."""
    with torch.no_grad():
        dets = detector(images)
    out = []
    for d, person_boxes in zip(dets, _per_image(boxes), strict=True):
        if len(person_boxes) == 0:
            continue
        if len(d) == 0:
            out += [False] * len(person_boxes)
        else:
            out += (box_iou(person_boxes, d.boxes) >= iou).any(1).tolist()
    return torch.tensor(out, dtype=torch.bool)


@dataclass
class TShirtConfig:
    """steps: optimisation steps; batch: crops per step; samples: EOT draws per crop; size: patch
    pixels (h, w); lr: Adam step; tv / nps: weights of total variation and non-printability;
    kappa: margin below the threshold past which a person stops pulling; iou: overlap that ties a
    candidate box to the person; eot: transformation ranges (``EOT.rigid()`` for Thys et al.'s
    rigid patch); color: printer colour transform (None: none); weighting: ``"minmax"`` or
    ``"average"`` over detectors; topk: the loss averages the best ``topk`` overlapping candidates
    (3: OpenCV's HOG needs 3 grouped windows for a detection); schedule: ``"constant"`` step size
    or ``"cosine"`` decay to zero over the steps; seed."""

    steps: int = 300
    batch: int = 8
    samples: int = 2
    topk: int = 3
    size: tuple[int, int] = (64, 64)
    lr: float = 0.03
    tv: float = 2.5
    nps: float = 0.05
    kappa: float = 1.0
    iou: float = 0.3
    eot: EOT = field(default_factory=EOT)
    color: ColorTransform | None = None
    weighting: str = "minmax"
    schedule: str = "constant"
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch", "samples", "topk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AttackError(f"{name} must be an integer >= 1, got {v!r}")
        if len(self.size) != 2 or min(self.size) < 4:
            raise AttackError(f"size is the patch (h, w) in pixels, >= 4 each, got {self.size}")
        if self.lr <= 0 or self.tv < 0 or self.nps < 0 or self.kappa < 0:
            raise AttackError("lr must be > 0 and tv, nps, kappa >= 0")
        if not 0 < self.iou <= 1:
            raise AttackError(f"iou must be in (0, 1], got {self.iou}")
        if self.schedule not in ("constant", "cosine"):
            raise AttackError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


@dataclass
class TShirtResult:
    """patch: ``[3, h, w]`` in [0, 1]; history: per-step dicts (loss, per-detector losses, weights)."""

    patch: torch.Tensor
    history: list[dict]
    weights: list[float] | None = None
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


class AdversarialTShirt:
    """Gradient-based T-shirt patch against one or several differentiable person detectors."""

    def __init__(
        self,
        detectors: PersonDetector | Sequence[PersonDetector],
        config: TShirtConfig | None = None,
    ) -> None:
        self.detectors = [detectors] if isinstance(detectors, PersonDetector) else list(detectors)
        if not self.detectors or not all(isinstance(d, PersonDetector) for d in self.detectors):
            raise AttackError(f"need PersonDetector instances, got {detectors!r}")
        self.config = config or TShirtConfig()
        self.config.validate()

    def train(
        self,
        crops: PersonCrops | PersonScenes,
        init: torch.Tensor | None = None,
        log_every: int = 25,
    ) -> TShirtResult:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        start = init.clone() if init is not None else torch.rand(3, *cfg.size, generator=gen)
        param = torch.logit(start.clamp(1e-3, 1 - 1e-3)).requires_grad_(True)
        opt = torch.optim.Adam([param], lr=cfg.lr * 4)  # logit space: about cfg.lr in colour
        sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
            if cfg.schedule == "cosine"
            else None
        )
        weights = MinMaxWeights(len(self.detectors), cfg.weighting)
        palette = default_palette()
        history = []
        for d in self.detectors:
            d.eval()
        for step in range(cfg.steps):
            idx = torch.randperm(len(crops), generator=gen)[: cfg.batch]
            batch = crops.subset(idx)
            patch = torch.sigmoid(param)
            images, boxes = batch.dress(patch, cfg.eot, cfg.color, cfg.samples, gen)
            losses = torch.stack(
                [
                    person_scores(d, images, boxes, cfg.iou, cfg.topk, cfg.kappa).mean()
                    for d in self.detectors
                ]
            )
            attack = weights(losses) if len(self.detectors) > 1 else losses[0]
            reg = cfg.tv * total_variation(patch) + cfg.nps * non_printability(patch, palette)
            loss = attack + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            entry = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "detector_losses": [round(float(v), 4) for v in losses.detach()],
                "weights": [round(float(v), 4) for v in weights.weights],
            }
            history.append(entry)
            if (step + 1) % log_every == 0 or step == 0 or step + 1 == cfg.steps:
                log.info(
                    "t-shirt step %d/%d  loss %.4f  detectors %s  weights %s",
                    step + 1,
                    cfg.steps,
                    entry["loss"],
                    entry["detector_losses"],
                    entry["weights"],
                )
        return TShirtResult(
            torch.sigmoid(param).detach(), history, [float(v) for v in weights.weights]
        )


class OpenCVHOGBlackBox:
    """OpenCV's unmodified ``HOGDescriptor.detectMultiScale`` as a black box: images go in as 8-bit
    BGR, only its returned windows and weights come out.  ``score`` is the best weight among the
    raw windows (no grouping) overlapping the person, floored at ``floor`` (its hit threshold)."""

    def __init__(self, floor: float = -1.5, scale: float = 1.05) -> None:
        import cv2

        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.floor, self.scale, self.queries = floor, scale, 0

    @staticmethod
    def _bgr(image: torch.Tensor):
        import numpy as np

        arr = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(arr[:, :, ::-1])

    def _detect(self, image: torch.Tensor, hit: float, group: int):
        rects, weights = self.hog.detectMultiScale(
            self._bgr(image),
            hitThreshold=hit,
            winStride=(8, 8),
            padding=(8, 8),
            scale=self.scale,
            groupThreshold=group,
        )
        self.queries += 1
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rects], dtype=torch.float32)
        return boxes.reshape(-1, 4), torch.as_tensor(weights, dtype=torch.float32).reshape(-1)

    def scores(self, images: torch.Tensor, boxes: Boxes, iou: float = 0.3) -> torch.Tensor:
        """``[P]`` per person (``boxes`` as in :func:`person_scores`)."""
        out = []
        for img, person_boxes in zip(images, _per_image(boxes), strict=True):
            b, w = self._detect(img, self.floor, 0)
            for box in person_boxes:
                near = (
                    box_iou(box[None], b)[0] >= iou if len(b) else torch.zeros(0, dtype=torch.bool)
                )
                out.append(float(w[near].max()) if near.any() else self.floor)
        return torch.tensor(out)

    def detected(self, images: torch.Tensor, boxes: Boxes, iou: float = 0.3) -> torch.Tensor:
        """Default call (hitThreshold 0, grouping 2): is each person found (IoU >= ``iou``)?"""
        out = []
        for img, person_boxes in zip(images, _per_image(boxes), strict=True):
            b, _ = self._detect(img, 0.0, 2)
            for box in person_boxes:
                out.append(bool(len(b)) and bool((box_iou(box[None], b)[0] >= iou).any()))
        return torch.tensor(out, dtype=torch.bool)


@dataclass
class ZOConfig:
    """steps, batch, samples: as :class:`TShirtConfig`; q: random directions per estimate; mu:
    smoothing radius (in logit units of the low-resolution parameters); lr: Adam step; grid: the
    patch is ``grid x grid`` parameters upsampled (bilinear) to ``size``."""

    steps: int = 150
    batch: int = 6
    samples: int = 2
    q: int = 10
    mu: float = 0.5
    lr: float = 0.2
    grid: int = 12
    size: tuple[int, int] = (64, 64)
    eot: EOT = field(default_factory=EOT)
    color: ColorTransform | None = None
    seed: int = 0


class ZOTShirt:
    """Zeroth-order T-shirt patch against a black box ``score(images, boxes) -> [N]``."""

    def __init__(self, score: ScoreFn, config: ZOConfig | None = None) -> None:
        self.score = score
        self.config = config or ZOConfig()

    def _patch(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            torch.sigmoid(z), size=self.config.size, mode="bilinear", align_corners=False
        )

    def train(
        self,
        crops: PersonCrops | PersonScenes,
        init: torch.Tensor | None = None,
        log_every: int = 10,
        snapshots: Sequence[int] = (),
    ) -> TShirtResult:
        """Optimise the patch on ``crops`` (or scenes); ``snapshots``: query counts at which the
        current patch is kept (``result.snapshots[count]``), for ASR-against-queries curves."""
        cfg = self.config
        pending = sorted(snapshots)
        kept: dict[int, torch.Tensor] = {}
        gen = torch.Generator().manual_seed(cfg.seed)
        if init is not None:
            small = F.interpolate(init[None], size=(cfg.grid, cfg.grid), mode="area")
            z = torch.logit(small.clamp(1e-3, 1 - 1e-3))
        else:
            z = torch.randn(1, 3, cfg.grid, cfg.grid, generator=gen)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        history, queries = [], 0
        for step in range(cfg.steps):
            idx = torch.randperm(len(crops), generator=gen)[: cfg.batch]
            batch = crops.subset(idx)
            # one fixed draw of transformations per step: common random numbers for all queries
            draw_seed = int(torch.randint(2**31, (), generator=gen))

            def f(zz: torch.Tensor, batch=batch, draw_seed=draw_seed) -> torch.Tensor:
                vals = []
                for one in zz:
                    g = torch.Generator().manual_seed(draw_seed)
                    imgs, boxes = batch.dress(
                        self._patch(one[None])[0], cfg.eot, cfg.color, cfg.samples, g
                    )
                    vals.append(self.score(imgs, boxes).mean())
                return torch.stack(vals)

            fz = f(z)
            grad, spent = random_estimate(f, z, cfg.q, cfg.mu, "gaussian", gen, fz)
            queries += (spent + 1) * len(batch) * cfg.samples  # images shown to the black box
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            t = step + 1
            z = z - cfg.lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            history.append({"step": t, "loss": float(fz[0]), "queries": queries})
            while pending and queries >= pending[0]:
                kept[pending.pop(0)] = self._patch(z)[0].detach()
            if t % log_every == 0 or step == 0 or t == cfg.steps:
                log.info(
                    "zo t-shirt step %d/%d  black-box score %.4f  queries %d",
                    t,
                    cfg.steps,
                    float(fz[0]),
                    queries,
                )
        return TShirtResult(self._patch(z)[0].detach(), history, snapshots=kept)


@dataclass
class ASR:
    """Attack success rate over (person, transformation) samples of persons the detector finds
    without the patch: ``rate = hidden / attacked``; ``per_person``: ``[P]`` hidden samples of each
    attacked person (out of ``attacked / P``), for :meth:`interval`."""

    attacked: int
    hidden: int
    clean_detected: int
    persons: int
    per_person: torch.Tensor | None = None

    @property
    def rate(self) -> float:
        return self.hidden / self.attacked if self.attacked else math.nan

    @classmethod
    def pooled(cls, parts: Sequence[ASR]) -> ASR:
        """One ASR over disjoint sets of persons, e.g. the held-out folds of a cross-validation
        (each person attacked by the patch of the fold that held it out)."""
        if not parts:
            raise AttackError("nothing to pool")
        pp = [a.per_person for a in parts]
        per_person = None if any(p is None for p in pp) else torch.cat(pp)
        return cls(
            sum(a.attacked for a in parts),
            sum(a.hidden for a in parts),
            sum(a.clean_detected for a in parts),
            sum(a.persons for a in parts),
            per_person,
        )

    def interval(
        self, level: float = 0.95, draws: int = 2000, seed: int = 0
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of :attr:`rate` that resamples *persons* (with all their
        transformations): samples of one person are correlated (a hard person stays hard), so a
        binomial interval over samples would be too narrow.  ``(nan, nan)`` without per-person
        counts or persons."""
        if not 0 < level < 1:
            raise AttackError(f"level must be in (0, 1), got {level}")
        pp = self.per_person
        if pp is None or len(pp) == 0:
            return math.nan, math.nan
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(pp), (draws, len(pp)), generator=gen)
        rates = pp.double()[idx].sum(1) / self.attacked  # every resample has P persons
        lo, hi = torch.quantile(rates, torch.tensor([(1 - level) / 2, (1 + level) / 2]).double())
        return float(lo), float(hi)


def attack_success(
    is_detected: Callable[[torch.Tensor, Boxes], torch.Tensor],
    data: PersonCrops | PersonScenes,
    patch: torch.Tensor,
    eot: EOT | None = None,
    color: ColorTransform | None = None,
    samples: int = 4,
    seed: int = 1234,
    batch: int = 16,
) -> ASR:
    """ASR of ``patch`` on ``data`` (person crops, or whole-photo scenes where every wearer has the
    patch) under ``samples`` random transformations, for a detector given as
    ``is_detected(images, boxes) -> [P] bool`` per person.  Persons missed without the patch are
    left out (there is nothing to hide)."""
    clean, owner, keep = found_without_patch(is_detected, data, batch)
    target = data.subset(keep.nonzero().squeeze(1))
    target_clean = clean[keep[owner]]  # the kept items' persons, in order
    gen = torch.Generator().manual_seed(seed)
    hidden = []
    with torch.no_grad():
        for i in range(0, len(target), batch):
            part = target.subset(range(i, min(i + batch, len(target))))
            imgs, boxes = part.dress(patch, eot, color, samples, gen)
            seen = is_detected(imgs, boxes)
            # image-major: item j's samples in turn, each with item j's persons
            per_item = torch.split(seen, [int(c) * samples for c in person_counts(part)])
            hidden += [(~s).view(samples, -1).sum(0) for s in per_item]
    pp = torch.cat(hidden)[target_clean] if hidden else torch.zeros(0, dtype=torch.long)
    return ASR(len(pp) * samples, int(pp.sum()), int(clean.sum()), len(clean), pp)


def person_counts(data: PersonCrops | PersonScenes) -> torch.Tensor:
    """``[N]`` wearers per item (1 per crop)."""
    if isinstance(data, PersonCrops):
        return torch.ones(len(data), dtype=torch.long)
    return torch.tensor([len(b) for b in data.boxes], dtype=torch.long)


def found_without_patch(
    is_detected: Callable[[torch.Tensor, Boxes], torch.Tensor],
    data: PersonCrops | PersonScenes,
    batch: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``[P]`` bool: each person found without a patch; ``[P]`` the item (crop or scene) each
    person belongs to; ``[N]`` bool: items with at least one found person)."""
    clean = torch.cat([is_detected(*_part(data, i, batch)) for i in range(0, len(data), batch)])
    owner = torch.repeat_interleave(torch.arange(len(data)), person_counts(data))
    keep = torch.zeros(len(data), dtype=torch.bool).index_fill_(0, owner[clean], True)
    return clean, owner, keep


def _part(data, i: int, batch: int):
    part = data.subset(range(i, min(i + batch, len(data))))
    return part.images, part.boxes
