"""Gradient-free T-shirt: the same objective from the scores of a black box (e.g. NanoDet's outputs,
or OpenCV's own ``HOGDescriptor.detectMultiScale``), with random-direction estimates and ZO-Adam
on a low-resolution parameterisation of the patch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..zo.adam import adam_moments
from ..zo.estimators import random_estimate
from .loss import ScoreFn
from .placement import PersonCrops
from .scenes import PersonScenes
from .transforms import EOT, ColorTransform
from .tshirt import TShirtResult

log = logging.getLogger(__name__)


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
            t = step + 1
            m, v, direction = adam_moments(m, v, grad, t)
            z = z - cfg.lr * direction
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
