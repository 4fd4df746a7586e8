"""Promotion-suppression effect (PSE) of an adversarial perturbation (Xu et al., arXiv 1904.02057).

An attack moving ``x`` (true class ``y``) to ``x_adv`` (adversarial class ``t``: the target, or the
new prediction of an untargeted attack) changes the logit margin ``z_t - z_y`` by
``delta z_t - delta z_y``: *promotion* of the target (``delta z_t``) plus *suppression* of the true
class (``-delta z_y``).  :func:`unit_pse` splits both terms over the units of a layer, :func:`pixel_pse`
over the pixels, and :func:`categorize` labels each perturbation by which term dominates.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from .attribution import integrated_gradients, unit_conductance
from .hooks import ExplainError, capture, check_images, check_labels, get_layer, last_linear

CATEGORIES = ("suppression-dominated", "balanced", "promotion-dominated")
#: Default category thresholds on the suppression share S+ / (P+ + S+): a perturbation is dominated
#: by one effect when that effect is at least twice the other (share >= 2/3 or <= 1/3).  The paper
#: does not publish its thresholds; these are ours.
SUPPRESSION_ABOVE = 2 / 3
PROMOTION_BELOW = 1 / 3


@dataclass
class UnitPSE:
    """Per-unit promotion and suppression of one batch of perturbations.

    Attributes:
        layer: the layer whose units (output channels; input features for ``method="exact"``) are
            explained.
        method: ``"exact"`` (linear head: ``delta z_c = sum_k w_ck delta a_k``) or ``"conductance"``
            (integrated gradients along the straight input path from x to x_adv).
        true_class, adv_class: ``[N]`` the true class y and the adversarial class t.
        promotion: ``[N, K]`` unit k's contribution to ``delta z_t`` (positive: promotes t).
        suppression: ``[N, K]`` unit k's contribution to ``-delta z_y`` (positive: suppresses y).
        delta_adv, delta_true: ``[N]`` the measured logit changes ``delta z_t`` and ``delta z_y``.
    """

    layer: str
    method: str
    true_class: torch.Tensor
    adv_class: torch.Tensor
    promotion: torch.Tensor
    suppression: torch.Tensor
    delta_adv: torch.Tensor
    delta_true: torch.Tensor

    def completeness_error(self) -> torch.Tensor:
        """``[N]`` relative error of the unit sums against the measured logit changes:
        ``(|sum P - dz_t| + |sum S + dz_y|) / (|dz_t| + |dz_y|)``."""
        err = (self.promotion.sum(1) - self.delta_adv).abs()
        err = err + (self.suppression.sum(1) + self.delta_true).abs()
        return err / (self.delta_adv.abs() + self.delta_true.abs()).clamp_min(1e-12)

    def suppression_share(self) -> torch.Tensor:
        return suppression_share(self.delta_adv, -self.delta_true)

    def categories(
        self, suppression_above: float = SUPPRESSION_ABOVE, promotion_below: float = PROMOTION_BELOW
    ) -> list[str]:
        return categorize(self.suppression_share(), suppression_above, promotion_below)


def suppression_share(promotion: torch.Tensor, suppression: torch.Tensor) -> torch.Tensor:
    """``S+ / (P+ + S+)`` in [0, 1] per sample, with ``x+ = max(x, 0)``: the share of the margin gain
    that comes from suppressing the true class; NaN where neither term is positive."""
    p, s = promotion.clamp_min(0), suppression.clamp_min(0)
    total = p + s
    return torch.where(total > 0, s / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def categorize(
    share: torch.Tensor,
    suppression_above: float = SUPPRESSION_ABOVE,
    promotion_below: float = PROMOTION_BELOW,
) -> list[str]:
    """Category per sample from its suppression share: ``"suppression-dominated"`` when
    ``share >= suppression_above``, ``"promotion-dominated"`` when ``share <= promotion_below``,
    ``"balanced"`` in between, ``"none"`` when the margin did not grow (NaN share)."""
    if not 0 <= promotion_below < suppression_above <= 1:
        raise ExplainError(
            "thresholds must satisfy 0 <= promotion_below < suppression_above <= 1, got "
            f"{promotion_below} and {suppression_above}"
        )
    out = []
    for v in share.tolist():
        if v != v:
            out.append("none")
        elif v >= suppression_above:
            out.append(CATEGORIES[0])
        elif v <= promotion_below:
            out.append(CATEGORIES[2])
        else:
            out.append(CATEGORIES[1])
    return out


def _prepare(model, x, x_adv, labels, adv_class, watch: nn.Module | None = None):
    """Validate, run the model on both batches, and (with ``watch``) keep that module's input and
    output of each pass: ``(logits, logits_adv, y, t, [in, in_adv], [out, out_adv])``."""
    check_images(x, "inputs")
    check_images(x_adv, "adversarial inputs")
    if x.shape != x_adv.shape:
        raise ExplainError(
            f"inputs {tuple(x.shape)} and adversarial inputs {tuple(x_adv.shape)} differ in shape"
        )
    with torch.no_grad(), ExitStack() as stack:
        feats = stack.enter_context(capture(watch, inputs=True)) if watch is not None else []
        outs = stack.enter_context(capture(watch)) if watch is not None else []
        logits, logits_adv = model(x), model(x_adv)
    y = check_labels(labels, x.shape[0], logits.shape[1], "labels").to(x.device)
    t = logits_adv.argmax(1) if adv_class is None else adv_class
    t = check_labels(t, x.shape[0], logits.shape[1], "adv_class").to(x.device)
    if n_same := int((t == y).sum()):
        raise ExplainError(
            f"{n_same} samples have adversarial class == true class (failed attacks); "
            "drop them first (see explain.analysis.successful)"
        )
    return logits, logits_adv, y, t, feats, outs


def unit_pse(
    model: nn.Module,
    inputs: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    adv_class: torch.Tensor | None = None,
    layer: str | None = None,
    method: str = "auto",
    steps: int = 32,
    batch_size: int = 1024,
) -> UnitPSE:
    """Per-unit promotion/suppression of the perturbations ``adversarial - inputs``.

    Args:
        model: classifier in eval mode, ``[N, ...] -> [N, classes]`` logits.
        inputs, adversarial: ``[N, C, ...]`` clean and adversarial inputs.
        labels: ``[N]`` true classes; adv_class: ``[N]`` target classes (default: the prediction on
            the adversarial input). Samples whose adversarial class equals the label are rejected.
        layer: a submodule name; default: the last ``nn.Linear``, whose input features are the units
            (for GAP + linear networks, the channels of the last conv layer).
        method: ``"exact"`` (only for the final linear layer: the split is exact), ``"conductance"``
            (any layer: integrated gradients along the input path, complete up to O(1/steps^2)), or
            ``"auto"`` (exact when possible).
        steps: integration intervals for ``"conductance"``.
    """
    if method not in ("auto", "exact", "conductance"):
        raise ExplainError(f"method must be 'auto', 'exact' or 'conductance', got {method!r}")
    name, module = get_layer(model, layer if layer is not None else last_linear(model))
    # a final linear layer is watched in the same passes: its input features are the units
    watch = module if isinstance(module, nn.Linear) else None
    logits, logits_adv, y, t, feats, outs = _prepare(
        model, inputs, adversarial, labels, adv_class, watch
    )
    d_adv = (logits_adv - logits).gather(1, t[:, None]).squeeze(1)
    d_true = (logits_adv - logits).gather(1, y[:, None]).squeeze(1)
    exact_ok = len(outs) == 2 and torch.equal(outs[0], logits) and torch.equal(outs[1], logits_adv)
    if method == "exact" and not exact_ok:
        raise ExplainError(
            f"the exact split needs the layer to be the final nn.Linear producing the logits; "
            f"{name!r} is not (use method='conductance')"
        )
    if exact_ok and method != "conductance":
        da = (feats[1] - feats[0]).flatten(1)  # [N, K] feature change
        w = module.weight
        promotion, suppression = w[t] * da, -w[y] * da
        used = "exact"
    else:
        promotion, true_part = unit_conductance(
            model, module, adversarial, inputs, [t, y], steps=steps, batch_size=batch_size
        )
        suppression, used = -true_part, "conductance"
    return UnitPSE(name, used, y, t, promotion.detach(), suppression.detach(), d_adv, d_true)


@dataclass
class PixelPSE:
    """Pixel-level promotion and suppression maps (integrated gradients from x to x_adv).

    Attributes:
        promotion: ``[N, H, W]`` >= 0: pixels whose change raised the adversarial class's logit.
        suppression: ``[N, H, W]`` >= 0: pixels whose change lowered the true class's logit.
        ig_adv, ig_true: ``[N, C, H, W]`` the signed attributions of ``z_t`` and ``z_y``.
    """

    promotion: torch.Tensor
    suppression: torch.Tensor
    ig_adv: torch.Tensor
    ig_true: torch.Tensor


def pixel_pse(
    model: nn.Module,
    inputs: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    adv_class: torch.Tensor | None = None,
    steps: int = 32,
    method: str = "gausslegendre",
    batch_size: int = 512,
) -> PixelPSE:
    """Pixel maps of promotion (``max(IG_t, 0)``) and suppression (``max(-IG_y, 0)``), summed over
    channels, with integrated gradients from ``inputs`` (baseline) to ``adversarial``."""
    _, _, y, t, _, _ = _prepare(model, inputs, adversarial, labels, adv_class)
    ig_t = integrated_gradients(model, adversarial, inputs, t, steps, method, batch_size)
    ig_y = integrated_gradients(model, adversarial, inputs, y, steps, method, batch_size)
    return PixelPSE(ig_t.sum(1).clamp_min(0), (-ig_y.sum(1)).clamp_min(0), ig_t, ig_y)
