"""Matplotlib figures for the report, written atomically as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import torch

from ..engine.atomic import save_figure as _save


def training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """Validation accuracy per epoch for each named run."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        if hist and "val_acc" in hist[0]:
            ax.plot(ep, [100 * h["val_acc"] for h in hist], marker="o", label=f"{name} (val)")
        ax.plot(
            ep, [100 * h["train_acc"] for h in hist], ls="--", alpha=0.6, label=f"{name} (train)"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_flops(points: Mapping[str, tuple[float, float]], path: Path) -> Path:
    """One point per model: (FLOPs reduction x, accuracy in [0, 1])."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, (red, acc) in points.items():
        ax.scatter([red], [100 * acc], s=60)
        ax.annotate(name, (red, 100 * acc), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("FLOPs reduction (dense MACs / kept MACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_density(
    layers: Sequence[str], densities: Mapping[str, Sequence[float]], path: Path
) -> Path:
    """Grouped bars: kept fraction of weights per layer for each pruned model."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(densities), 1)
    for i, (name, dens) in enumerate(densities.items()):
        xs = [j + i * width for j in range(len(layers))]
        ax.bar(xs, [100 * d for d in dens], width=width, label=name)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=45, ha="right"
    )
    ax.set_ylabel("weights kept (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def mask_image(mask: torch.Tensor, title: str, path: Path) -> Path:
    """A 3D/2D conv mask shown as the GEMM matrix W[F, C*k] (white = kept)."""
    m = mask.reshape(mask.shape[0], -1).float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.imshow(m, aspect="auto", cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_xlabel("input channel x kernel location")
    ax.set_ylabel("filter")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def method_bars(accuracies: Mapping[str, float], dense: float, path: Path) -> Path:
    """Horizontal bars: accuracy (in [0, 1]) per method, with the dense accuracy as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(accuracies)))
    names = list(accuracies)
    ax.barh(names, [100 * accuracies[n] for n in names], color="#4a7")
    ax.axvline(100 * dense, color="k", ls="--", lw=1)
    lo = min(100 * min(accuracies.values()), 100 * dense) - 5
    ax.set_xlim(max(0, lo), 100)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.invert_yaxis()
    return _save(fig, path)


def speedup_vs_flops(
    series: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str = ""
) -> Path:
    """Measured speedup against MAC reduction per series, with the ideal (speedup = reduction) and
    0.8 x reduction lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = 1.0
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        top = max(top, *(p[0] for p in pts))
    ax.plot([1, top], [1, top], "k--", lw=1, label="speedup = MAC reduction")
    ax.plot([1, top], [0.8, 0.8 * top], "k:", lw=1, label="0.8 x MAC reduction")
    ax.set_xlabel("MAC reduction")
    ax.set_ylabel("speedup over dense PyTorch")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def attack_grid(clean: torch.Tensor, adversarial: torch.Tensor, path: Path, n: int = 8) -> Path:
    """Rows: clean, adversarial, perturbation (amplified to the full range) for ``n`` samples.
    Images ``[N, C, H, W]`` in [0, 1] (clips ``[N, C, T, H, W]`` show their middle frame)."""
    if clean.dim() == 5:
        clean, adversarial = (
            clean[:, :, clean.shape[2] // 2],
            adversarial[:, :, clean.shape[2] // 2],
        )
    n = min(n, len(clean))
    delta = adversarial[:n] - clean[:n]
    scale = delta.abs().amax().clamp_min(1e-12)
    rows = [clean[:n], adversarial[:n], 0.5 + 0.5 * delta / scale]
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    for r, (imgs, label) in enumerate(
        zip(rows, ("clean", "adversarial", "perturbation"), strict=True)
    ):
        for i in range(n):
            img = imgs[i].detach().cpu().clamp(0, 1)
            ax = axes[r][i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img[:3].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    return _save(fig, path)


def accuracy_vs_budget(
    curves: Mapping[str, Mapping[float, float]], path: Path, title: str = ""
) -> Path:
    """Accuracy (%) against the attack budget (% of edges flipped), one line per model."""
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for name, pts in curves.items():
        xs = sorted(pts)
        ax.plot([100 * b for b in xs], [100 * pts[b] for b in xs], marker="o", label=name)
    ax.set_xlabel("budget (% of edges flipped)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def save_patch(patch: torch.Tensor, path: Path, print_side: int = 1024) -> Path:
    """The patch ``[3, h, w]`` as a PNG at print resolution (nearest-neighbour upscaled so its
    longer side is ``print_side`` pixels: 1024 px is 8.7 cm at 300 dpi)."""
    import cv2
    import numpy as np

    from ..engine.atomic import atomic_path

    h, w = patch.shape[1:]
    s = max(1, print_side // max(h, w))
    img = (patch.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = np.ascontiguousarray(np.repeat(np.repeat(img, s, 0), s, 1)[:, :, ::-1])
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode the patch for {path}")
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_bytes(png.tobytes())
    return Path(path)


def detection_grid(
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    found: Sequence[bool],
    path: Path,
    titles: Sequence[str],
) -> Path:
    """Images ``[N, 3, H, W]`` with detector boxes drawn (green when the person is found, red when
    hidden), one column per image."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 2.8), squeeze=False)
    for i in range(n):
        ax = axes[0][i]
        ax.imshow(images[i].detach().clamp(0, 1).permute(1, 2, 0).numpy())
        for x1, y1, x2, y2 in boxes[i].detach().tolist():
            ax.add_patch(
                plt.Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    lw=1.2,
                    color="lime" if found[i] else "red",
                )
            )
        ax.set_title(titles[i], fontsize=7, color="black" if found[i] else "darkred")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
