"""One attack explained end to end: which perturbations succeed, their promotion/suppression split
per unit and per pixel, the link of the pixel maps to Grad-CAM, and the units' sensitivity."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import Attack
from .cam import grad_cam, random_overlap, topk_overlap
from .dissect import unit_sensitivity
from .hooks import ExplainError, get_layer, last_spatial_layer
from .pse import (
    CATEGORIES,
    PROMOTION_BELOW,
    SUPPRESSION_ABOVE,
    PixelPSE,
    UnitPSE,
    pixel_pse,
    unit_pse,
)

log = logging.getLogger(__name__)


class NothingToExplain(ExplainError):
    """Every input was misclassified before the attack, or the attack failed on every input."""


@dataclass
class AttackExplanation:
    """What one attack did to a model, over the samples it succeeded on.

    Attributes:
        attack: display name; misclassified: inputs the model got wrong before any attack (skipped);
        attempted: samples attacked (the correctly classified ones);
        failed: samples on which the attack failed: excluded from every statistic, counted here.
        inputs, adversarial: ``[N, C, H, W]`` the successful samples; labels, adv_class: ``[N]``.
        unit: per-unit PSE; pixel: per-pixel PSE.
        cam_true: ``[N, 1, H, W]`` Grad-CAM of the true class on the clean input;
        cam_adv: Grad-CAM of the adversarial class on the adversarial input.
        overlap_suppression / overlap_promotion: ``[N]`` top-k overlap of the suppression map with
            ``cam_true`` / of the promotion map with ``cam_adv``; random_*: the same for random maps.
        sensitivity: ``[K]`` units' attack sensitivity at ``cam_layer``.
    """

    attack: str
    misclassified: int
    attempted: int
    failed: int
    inputs: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    adv_class: torch.Tensor
    unit: UnitPSE
    pixel: PixelPSE
    cam_layer: str
    cam_true: torch.Tensor
    cam_adv: torch.Tensor
    fraction: float
    overlap_suppression: torch.Tensor
    overlap_promotion: torch.Tensor
    random_suppression: torch.Tensor
    random_promotion: torch.Tensor
    sensitivity: torch.Tensor
    thresholds: tuple[float, float] = field(default=(SUPPRESSION_ABOVE, PROMOTION_BELOW))

    @property
    def succeeded(self) -> int:
        return self.attempted - self.failed

    def categories(self) -> list[str]:
        return self.unit.categories(*self.thresholds)

    def category_shares(self) -> dict[str, float]:
        """Share of successful perturbations in each category (``"none"`` included when present)."""
        counts = Counter(self.categories())
        n = max(1, self.succeeded)
        keys = [*CATEGORIES, *(["none"] if counts.get("none") else [])]
        return {k: counts.get(k, 0) / n for k in keys}

    def summary(self) -> dict[str, float | int | str]:
        shares = self.category_shares()
        mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
        return {
            "attack": self.attack,
            "misclassified (skipped)": self.misclassified,
            "attempted": self.attempted,
            "failed (excluded)": self.failed,
            **{k: round(v, 3) for k, v in shares.items()},
            "mean suppression share": mean(self.unit.suppression_share().nan_to_num(0.5)),
            "overlap supp./CAM true": mean(self.overlap_suppression),
            "overlap prom./CAM adv": mean(self.overlap_promotion),
            "random overlap": mean(self.random_suppression),
            "completeness error (max)": float(self.unit.completeness_error().max())
            if self.succeeded
            else float("nan"),
        }


def successful(
    model: nn.Module,
    inputs: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N]`` bool: the attack succeeded (prediction left the label; reached ``target`` if given)."""
    with torch.no_grad():
        pred = model(adversarial).argmax(1)
    return pred == target if target is not None else pred != labels


def explain_attack(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack,
    name: str | None = None,
    target: torch.Tensor | None = None,
    layer: str | None = None,
    cam_layer: str | None = None,
    fraction: float = 0.1,
    steps: int = 32,
    thresholds: tuple[float, float] = (SUPPRESSION_ABOVE, PROMOTION_BELOW),
) -> AttackExplanation:
    """Run ``attack`` on ``(inputs, labels)`` and explain its successful perturbations.

    Args:
        model: classifier in eval mode; inputs ``[N, C, H, W]`` in [0, 1]; labels ``[N]``.
        target: ``[N]`` target classes for a targeted attack (default untargeted: the adversarial
            class is the new prediction).
        layer: where unit PSE is computed (default: the final linear layer, exact split).
        cam_layer: the Grad-CAM and sensitivity layer (default: the last feature-map layer).
        fraction: the top-k share of pixels compared between PSE maps and CAMs.
        thresholds: (suppression_above, promotion_below) of :func:`~edgeguard.explain.pse.categorize`.
    """
    name = name or type(attack).__name__
    cam_layer = cam_layer or last_spatial_layer(model, inputs)
    get_layer(model, cam_layer)  # bad layer names fail before the attack runs
    if layer is not None:
        get_layer(model, layer)
    with torch.no_grad():
        correct = model(inputs).argmax(1) == labels
    if not correct.any():
        raise NothingToExplain("the model misclassifies every input; nothing to attack")
    misclassified = int((~correct).sum())
    inputs, labels = inputs[correct], labels[correct]
    target = target[correct] if target is not None else None
    adversarial = attack(model, inputs, labels, target)
    ok = successful(model, inputs, adversarial, labels, target)
    failed = int((~ok).sum())
    if failed:
        log.info("%s failed on %d of %d samples: excluded", name, failed, len(ok))
    x, xa, y = inputs[ok], adversarial[ok], labels[ok]
    with torch.no_grad():
        t = model(xa).argmax(1)
    if len(x) == 0:
        raise NothingToExplain(f"{name} failed on all {len(ok)} samples; nothing to explain")
    unit = unit_pse(model, x, xa, y, t, layer=layer, steps=steps)
    pixel = pixel_pse(model, x, xa, y, t, steps=steps)
    cam_true = grad_cam(model, x, cam_layer, y)
    cam_adv = grad_cam(model, xa, cam_layer, t)
    return AttackExplanation(
        attack=name,
        misclassified=misclassified,
        attempted=len(ok),
        failed=failed,
        inputs=x,
        adversarial=xa,
        labels=y,
        adv_class=t,
        unit=unit,
        pixel=pixel,
        cam_layer=cam_layer,
        cam_true=cam_true,
        cam_adv=cam_adv,
        fraction=fraction,
        overlap_suppression=topk_overlap(pixel.suppression, cam_true, fraction),
        overlap_promotion=topk_overlap(pixel.promotion, cam_adv, fraction),
        random_suppression=random_overlap(cam_true, fraction),
        random_promotion=random_overlap(cam_adv, fraction),
        sensitivity=unit_sensitivity(model, cam_layer, x, xa),
        thresholds=thresholds,
    )
