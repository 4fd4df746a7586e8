"""Adversarial T-shirt (Xu et al., arXiv 1910.11099): a patch optimised over a distribution of
cloth deformations (TPS) and photographic transformations (EOT) to hide the wearer from person
detectors; with several detectors, min-max weights (Wang et al. 2021) instead of an average.

The patch minimises ``sum_k w_k mean(f_k) + tv * TV + nps * NPS`` (``f_k``: :mod:`.loss`), with
``w`` uniform (``"average"``) or moved toward the detector that still sees people (``"minmax"``).
The gradient-free variant is :mod:`.zo`; success rates are :mod:`.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...models.detectors import PersonDetector
from ..base import AttackError
from ..minmax import MinMaxWeights
from .loss import detected, person_scores
from .metrics import found_without_patch, person_counts
from .placement import PersonCrops
from .printability import default_palette, non_printability, total_variation
from .scenes import PersonScenes
from .transforms import EOT, ColorTransform

log = logging.getLogger(__name__)


@dataclass
class TShirtConfig:
    """steps: optimisation steps; batch: crops per step; samples: EOT draws per crop; size: patch
    pixels (h, w); lr: Adam step; tv / nps: weights of total variation and non-printability;
    kappa: margin below the threshold past which a person stops pulling; iou: overlap that ties a
    candidate box to the person; eot: transformation ranges (``EOT.rigid()`` for Thys et al.'s
    rigid patch); color: printer colour transform (None: none); weighting: ``"minmax"`` or
    ``"average"`` over detectors; gamma: pull of the min-max weights back toward uniform (a
    loss gap d between detectors moves their weights apart by about d / gamma); ascend: what the
    min-max weights ascend: ``"loss"`` (the detectors' losses, as the paper) or ``"found"`` (each
    detector's share of the step's wearers whose best overlapping score is still at or above its
    threshold: one scale for every detector, where their score gaps are not); found_only: each
    detector's loss and found share count only the wearers it finds without a patch (the persons
    its ASR counts; False: every wearer of the training items); topk: the loss
    averages the best ``topk`` overlapping candidates (3: OpenCV's HOG needs 3 grouped windows
    for a detection); schedule: ``"constant"`` step size
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
    # losses are score gaps (|d| < 0.3 typically): gamma 1 would keep the weights within 0.1 of uniform
    gamma: float = 0.2
    ascend: str = "loss"
    found_only: bool = False
    schedule: str = "constant"
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch", "samples", "topk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AttackError(f"{name} must be an integer >= 1, got {v!r}")
        if len(self.size) != 2 or min(self.size) < 4:
            raise AttackError(f"size is the patch (h, w) in pixels, >= 4 each, got {self.size}")
        if self.lr <= 0 or self.tv < 0 or self.nps < 0 or self.kappa < 0 or self.gamma < 0:
            raise AttackError("lr must be > 0 and tv, nps, kappa, gamma >= 0")
        if not 0 < self.iou <= 1:
            raise AttackError(f"iou must be in (0, 1], got {self.iou}")
        if self.ascend not in ("loss", "found"):
            raise AttackError(f"ascend must be 'loss' or 'found', got {self.ascend!r}")
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
        weights = MinMaxWeights(len(self.detectors), cfg.weighting, gamma=cfg.gamma)
        palette = default_palette()
        history = []
        for d in self.detectors:
            d.eval()
        clean = self._found_clean(crops) if cfg.found_only else None
        counts = person_counts(crops)
        for step in range(cfg.steps):
            idx = torch.randperm(len(crops), generator=gen)[: cfg.batch]
            batch = crops.subset(idx)
            patch = torch.sigmoid(param)
            images, boxes = batch.dress(patch, cfg.eot, cfg.color, cfg.samples, gen)
            gaps = [
                person_scores(d, images, boxes, cfg.iou, cfg.topk, cfg.kappa)
                for d in self.detectors
            ]
            if clean is not None:  # the persons each detector's ASR counts
                rows = _person_rows(idx, counts, cfg.samples)
                gaps = [g[c[rows]] for g, c in zip(gaps, clean, strict=True)]
            # a detector that finds nobody in this batch adds nothing (0, with a graph)
            losses = torch.stack([g.mean() if len(g) else images.sum() * 0 for g in gaps])
            found = torch.stack(
                [(g.detach() >= 0).float().mean() if len(g) else torch.tensor(0.0) for g in gaps]
            )
            ascend = found if cfg.ascend == "found" else None
            attack = weights(losses, ascend) if len(self.detectors) > 1 else losses[0]
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
                "found": [round(float(v), 4) for v in found],
                "weights": [round(float(v), 4) for v in weights.weights],
            }
            history.append(entry)
            if (step + 1) % log_every == 0 or step == 0 or step + 1 == cfg.steps:
                log.info(
                    "t-shirt step %d/%d  loss %.4f  detectors %s  found %s  weights %s",
                    step + 1,
                    cfg.steps,
                    entry["loss"],
                    entry["detector_losses"],
                    entry["found"],
                    entry["weights"],
                )
        return TShirtResult(
            torch.sigmoid(param).detach(), history, [float(v) for v in weights.weights]
        )

    def _found_clean(self, crops: PersonCrops | PersonScenes) -> list[torch.Tensor]:
        """Per detector, ``[P]`` bool over every wearer of ``crops`` (item-major): found without a
        patch (a final detection with IoU >= ``iou``)."""
        out = []
        for d in self.detectors:
            found, _, _ = found_without_patch(
                lambda im, bx, d=d: detected(d, im, bx, self.config.iou), crops, batch=8
            )
            out.append(found)
        return out


def _person_rows(idx: torch.Tensor, counts: torch.Tensor, samples: int) -> torch.Tensor:
    """Indices into the all-wearers order (item-major; ``counts``: ``[N]`` wearers per item) of
    the persons of ``dress``'s output for items ``idx``: item-major, each item's persons repeated
    ``samples`` times in a row."""
    starts = torch.cumsum(counts, 0) - counts
    rows = [
        torch.arange(int(starts[i]), int(starts[i] + counts[i])).repeat(samples)
        for i in idx.tolist()
    ]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
