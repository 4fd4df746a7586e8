"""Network dissection (Bau et al., CVPR 2017) and the attack sensitivity of units.

For each unit k of a layer: the activation level ``T_k`` exceeded by the top ``quantile`` (0.5%) of
its values over the whole dataset; per image, the unit's mask is its activation map upsampled
(bilinear) to the label resolution and thresholded (``> T_k``); its IoU with concept c is
``sum |M_k & L_c| / sum |M_k | L_c|`` over the images annotated for c's category.  The unit detects its
best concept when that IoU exceeds ``iou_threshold`` (0.04).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .hooks import ExplainError, capture, get_layer

log = logging.getLogger(__name__)


@dataclass
class Dissection:
    """Result of :func:`dissect`.

    Attributes:
        layer: the dissected layer; concepts: C names; concept_category: C category names.
        thresholds: ``[K]`` activation levels ``T_k``; iou: ``[K, C]``; iou_threshold: detector cut.
    """

    layer: str
    concepts: list[str]
    concept_category: list[str]
    thresholds: torch.Tensor
    iou: torch.Tensor
    iou_threshold: float

    @property
    def best_iou(self) -> torch.Tensor:
        return self.iou.max(1).values

    @property
    def best_concept(self) -> torch.Tensor:
        return self.iou.argmax(1)

    @property
    def is_detector(self) -> torch.Tensor:
        return self.best_iou > self.iou_threshold

    def labels(self) -> list[str | None]:
        """The concept each unit detects, or None."""
        return [
            self.concepts[c] if det else None
            for c, det in zip(self.best_concept.tolist(), self.is_detector.tolist(), strict=True)
        ]

    def detector_counts(self) -> dict[str, int]:
        """Detectors per concept category (e.g. ``{"colour": 5, "shape": 2}``)."""
        counts: dict[str, int] = {}
        for c, det in zip(self.best_concept.tolist(), self.is_detector.tolist(), strict=True):
            if det:
                cat = self.concept_category[c]
                counts[cat] = counts.get(cat, 0) + 1
        return counts


def _collate(dataset, indices):
    images, labels, has = [], [], []
    for i in indices:
        item = dataset[i]
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise ExplainError(
                "a concept dataset's items must be (image [3,H,W], labels [L,h,w], has_category [G])"
            )
        images.append(item[0])
        labels.append(torch.as_tensor(item[1]))
        has.append(torch.as_tensor(item[2], dtype=torch.bool))
    return images, labels, has


def _check_sizes(images, labels, indices, image_size, label_size):
    for i, img, lab in zip(indices, images, labels, strict=True):
        if img.dim() != 3 or tuple(img.shape[1:]) != image_size:
            raise ExplainError(
                f"item {i}: image has shape {tuple(img.shape)}, the first item's is "
                f"[C, {image_size[0]}, {image_size[1]}]; all images must have one size"
            )
        if lab.dim() != 3 or tuple(lab.shape[1:]) != label_size:
            raise ExplainError(
                f"item {i}: label maps have shape {tuple(lab.shape)}, expected [L, {label_size[0]}, "
                f"{label_size[1]}] like the first item; mask sizes must match across the dataset"
            )


@torch.no_grad()
def dissect(
    model: nn.Module,
    layer: str | nn.Module,
    dataset,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    progress: bool = True,
) -> Dissection:
    """Dissect the units of ``layer`` on a concept dataset (see :mod:`edgeguard.explain.concepts`).

    Args:
        model: network in eval mode taking the dataset's images (batched ``[B, 3, H, W]``).
        layer: submodule (name or module) whose output ``[B, K, h, w]`` holds the units.
        quantile: share of the top activations defining a unit's mask, in (0, 0.5].
        iou_threshold: a unit detects its best concept when their IoU exceeds it, in [0, 1).
    Returns a :class:`Dissection`.
    """
    if not 0 < quantile <= 0.5:
        raise ExplainError(f"quantile must be in (0, 0.5], got {quantile!r}")
    if not 0 <= iou_threshold < 1:
        raise ExplainError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
    name, module = get_layer(model, layer)
    n = len(dataset)
    if n == 0:
        raise ExplainError("the concept dataset is empty")
    concepts = list(dataset.concepts)
    cat_of = torch.as_tensor(dataset.concept_category, dtype=torch.long)
    if len(cat_of) != len(concepts):
        raise ExplainError("concept_category must give one category per concept")
    n_cat = len(dataset.categories)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    first_img, first_lab, _ = _collate(dataset, [0])
    image_size, label_size = tuple(first_img[0].shape[1:]), tuple(first_lab[0].shape[1:])

    def activations(images):
        with capture(module) as acts:
            model(torch.stack(images).to(device))
        a = acts[0]
        if a.dim() != 4:
            raise ExplainError(f"layer {name!r} gives {tuple(a.shape)}; dissection needs [B,K,h,w]")
        return a.float()

    # pass 1: exact top-quantile level per unit, keeping only the m largest values seen so far
    top = None
    for idx in tqdm(batches, desc=f"dissect {name}: quantiles", disable=not progress):
        images, labels, _ = _collate(dataset, idx)
        _check_sizes(images, labels, idx, image_size, label_size)
        a = activations(images)
        vals = a.transpose(0, 1).flatten(1)  # [K, B*h*w]
        if top is None:
            m = max(1, math.ceil(quantile * n * a.shape[2] * a.shape[3]))
            top = vals.new_empty(vals.shape[0], 0)
        merged = torch.cat([top, vals], 1)
        top = merged.topk(min(m, merged.shape[1]), dim=1).values
    thresholds = top[:, -1].clone()

    # pass 2: intersections and unions against every concept
    k, c = len(thresholds), len(concepts)
    inter = torch.zeros(k, c + 1, dtype=torch.float64)
    unit_area = torch.zeros(k, n_cat, dtype=torch.float64)  # unit mask areas per annotated category
    concept_area = torch.zeros(c + 1, dtype=torch.float64)
    t = thresholds.to(device).view(1, -1, 1, 1)
    for idx in tqdm(batches, desc=f"dissect {name}: IoU", disable=not progress):
        images, labels, has = _collate(dataset, idx)
        a = activations(images)
        up = F.interpolate(a, size=label_size, mode="bilinear", align_corners=False)
        masks = (up > t).flatten(2).cpu().double()  # [B, K, P]
        unit_area += masks.sum(2).T @ torch.stack(has).double()
        for b, lab in enumerate(labels):
            for lmap in lab.flatten(1).long():
                if int(lmap.max()) > c or int(lmap.min()) < 0:
                    raise ExplainError(f"item {idx[b]}: label ids must be in [0, {c}]")
                inter.index_add_(1, lmap, masks[b])
                concept_area += torch.bincount(lmap, minlength=c + 1).double()
    inter, concept_area = inter[:, 1:], concept_area[1:]
    union = unit_area[:, cat_of] + concept_area.view(1, -1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union)).float()
    cat_names = [dataset.categories[int(g)] for g in cat_of]
    return Dissection(name, concepts, cat_names, thresholds.cpu(), iou, iou_threshold)


@torch.no_grad()
def unit_sensitivity(
    model: nn.Module,
    layer: str | nn.Module,
    inputs: torch.Tensor,
    adversarial: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """``[K]`` attack sensitivity of each unit (channel) of ``layer``: the mean absolute change of its
    activation under the attack, ``mean |A_k(x_adv) - A_k(x)|``, divided by its mean clean magnitude
    ``mean |A_k(x)|`` (so units of different scales compare); NaN for units silent on every input."""
    if inputs.shape != adversarial.shape:
        raise ExplainError("inputs and adversarial inputs differ in shape")
    _, module = get_layer(model, layer)
    diff = mag = None
    for s in range(0, len(inputs), batch_size):
        with capture(module) as acts:
            model(inputs[s : s + batch_size])
            model(adversarial[s : s + batch_size])
        a, b = acts
        dims = [0, *range(2, a.dim())]
        d, m = (b - a).abs().sum(dims), a.abs().sum(dims)
        diff, mag = (d, m) if diff is None else (diff + d, mag + m)
    return torch.where(mag > 0, diff / mag.clamp_min(1e-30), torch.full_like(mag, float("nan")))


@dataclass
class SensitivityCorrelation:
    """Spearman rank correlation between units' attack sensitivity and interpretability (best IoU).

    Attributes: rho, p_value, units (units with a defined sensitivity), mean sensitivity of detector
    and non-detector units (NaN when a group is empty)."""

    rho: float
    p_value: float
    units: int
    detector_sensitivity: float
    other_sensitivity: float


def sensitivity_vs_interpretability(
    sensitivity: torch.Tensor, dissection: Dissection
) -> SensitivityCorrelation:
    """Rank correlation of ``sensitivity`` (``[K]``, from :func:`unit_sensitivity`) with each unit's
    best IoU in ``dissection``, over units with a defined sensitivity."""
    from scipy.stats import spearmanr

    if sensitivity.shape != dissection.best_iou.shape:
        raise ExplainError(
            f"sensitivity has {tuple(sensitivity.shape)} units, the dissection "
            f"{tuple(dissection.best_iou.shape)}: they must describe the same layer"
        )
    ok = ~sensitivity.isnan()
    if int(ok.sum()) < 3:
        raise ExplainError("fewer than 3 units have a defined sensitivity; nothing to correlate")
    s, iou, det = sensitivity[ok], dissection.best_iou[ok], dissection.is_detector[ok]
    res = spearmanr(s.numpy(), iou.numpy())
    mean = lambda v: float(v.mean()) if v.numel() else float("nan")  # noqa: E731
    return SensitivityCorrelation(
        float(res.statistic), float(res.pvalue), int(ok.sum()), mean(s[det]), mean(s[~det])
    )
