"""Figures of an explanation, written atomically as PNG (for the report and the CLI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..engine.atomic import save_figure as _save
from .analysis import AttackExplanation
from .dissect import Dissection
from .pse import CATEGORIES


def category_bars(explanations: Sequence[AttackExplanation], path: Path) -> Path:
    """Stacked bars: share of each perturbation category per attack (successful samples)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = [e.attack for e in explanations]
    bottom = np.zeros(len(names))
    colours = {
        "suppression-dominated": "#3b6fb6",
        "balanced": "#9a9a9a",
        "promotion-dominated": "#d0542c",
        "none": "#eeeeee",
    }
    for cat in [*CATEGORIES, "none"]:
        vals = np.array([100 * e.category_shares().get(cat, 0.0) for e in explanations])
        if cat == "none" and not vals.any():
            continue
        ax.bar(names, vals, bottom=bottom, label=cat, color=colours[cat])
        bottom += vals
    ax.set_ylabel("% of successful perturbations")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Promotion vs suppression per attack")
    return _save(fig, path)


def unit_pse_bars(e: AttackExplanation, path: Path, top: int = 12) -> Path:
    """Mean promotion and suppression of the ``top`` units with the largest total effect."""
    p, s = e.unit.promotion.mean(0), e.unit.suppression.mean(0)
    order = (p.abs() + s.abs()).argsort(descending=True)[:top]
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(x - 0.2, p[order].numpy(), 0.4, label="promotion of adversarial class", color="#d0542c")
    ax.bar(x + 0.2, s[order].numpy(), 0.4, label="suppression of true class", color="#3b6fb6")
    ax.set_xticks(x, [str(int(k)) for k in order])
    ax.set_xlabel(f"unit of {e.unit.layer} ({e.unit.method})")
    ax.set_ylabel("mean logit contribution")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title(f"{e.attack}: unit-level PSE")
    return _save(fig, path)


def _image(x: torch.Tensor) -> np.ndarray:
    img = x.detach().cpu().float()
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def pse_overlays(e: AttackExplanation, path: Path, n: int = 5) -> Path:
    """Per sample: clean image, adversarial image, promotion and suppression maps over the image,
    Grad-CAM of the true class and of the adversarial class."""
    n = min(n, len(e.inputs))
    cols = [
        "clean",
        "adversarial",
        "promotion (IG)",
        "suppression (IG)",
        "Grad-CAM true",
        "Grad-CAM adv.",
    ]
    fig, axes = plt.subplots(max(n, 1), len(cols), figsize=(1.6 * len(cols), 1.7 * max(n, 1)))
    axes = np.atleast_2d(axes)
    cmap = "gray" if e.inputs.shape[1] == 1 else None
    for i in range(n):
        base = _image(e.inputs[i])
        panels = [
            (base, None),
            (_image(e.adversarial[i]), None),
            (e.pixel.promotion[i], "Reds"),
            (e.pixel.suppression[i], "Blues"),
            (e.cam_true[i, 0], "jet"),
            (e.cam_adv[i, 0], "jet"),
        ]
        for j, (img, heat) in enumerate(panels):
            ax = axes[i, j]
            if heat is None:
                ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            else:  # the map over a dimmed grey copy of the image; near-zero values transparent
                grey = base if base.ndim == 2 else base.mean(2)
                ax.imshow(0.3 + 0.4 * grey, cmap="gray", vmin=0, vmax=1)
                h = img.detach().cpu().float().numpy()
                peak = float(np.abs(h).max()) or 1.0
                cam = heat == "jet"
                shown = h if cam else np.ma.masked_less(h, 0.1 * peak)
                ax.imshow(shown, cmap=heat, alpha=0.45 if cam else 0.85, vmin=0, vmax=peak)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
        axes[i, 0].set_ylabel(f"{int(e.labels[i])} -> {int(e.adv_class[i])}", fontsize=7)
    fig.suptitle(f"{e.attack}: pixel-level PSE and CAM", fontsize=9)
    return _save(fig, path)


def dissection_summary(d: Dissection, path: Path) -> Path:
    """Left: detectors per concept; right: best IoU per unit, sorted, with the detector threshold."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [lab for lab in d.labels() if lab is not None]
    names = sorted(set(labels), key=lambda c: -labels.count(c))
    a1.bar(names, [labels.count(c) for c in names], color="#3b6fb6")
    a1.set_ylabel("detector units")
    a1.set_title(f"{d.layer}: {len(labels)} of {len(d.thresholds)} units are detectors", fontsize=9)
    a1.tick_params(axis="x", rotation=60, labelsize=7)
    best = d.best_iou.sort(descending=True).values.numpy()
    a2.plot(best, marker=".", lw=1)
    a2.axhline(d.iou_threshold, color="r", ls="--", label=f"IoU {d.iou_threshold}")
    a2.set_xlabel("unit (sorted)")
    a2.set_ylabel("best IoU")
    a2.legend(fontsize=7)
    return _save(fig, path)


def sensitivity_scatter(sensitivity: Mapping[str, torch.Tensor], d: Dissection, path: Path) -> Path:
    """Attack sensitivity against best IoU per unit, one colour per attack."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, s in sensitivity.items():
        ax.scatter(d.best_iou.numpy(), s.numpy(), s=10, label=name, alpha=0.7)
    ax.axvline(d.iou_threshold, color="r", ls="--", lw=0.8)
    ax.set_xlabel("interpretability (best IoU)")
    ax.set_ylabel("attack sensitivity")
    ax.legend(fontsize=7)
    ax.set_title(f"{d.layer}: sensitivity vs interpretability", fontsize=9)
    return _save(fig, path)
