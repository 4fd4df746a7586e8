"""ZOO (Chen et al., 2017): coordinate-wise symmetric-difference estimates on a random batch of
coordinates per iteration, each coordinate updated by its own ADAM state."""

from __future__ import annotations

import torch

from .adam import adam_moments
from .base import ZOAttack
from .estimators import coordinate_estimate


class ZOO(ZOAttack):
    name = "zoo"

    def __init__(self, batch_coords: int = 16, betas=(0.9, 0.999), **kw) -> None:
        super().__init__(**kw)
        self.batch_coords, self.betas = batch_coords, betas

    def _step(self, state, f, x, gen, active, fx):
        n, d = len(x), x[0].numel()
        b = min(self.batch_coords, d)
        coords = torch.stack([torch.randperm(d, generator=gen)[:b] for _ in range(n)])
        g, spent = coordinate_estimate(f, x, coords, self.mu)
        n_all = len(active)
        if "m" not in state:
            state["m"] = torch.zeros(n_all, d)
            state["v"] = torch.zeros(n_all, d)
            state["t"] = torch.zeros(n_all, d)
        gf = g.flatten(1)
        m, v, t = state["m"][active], state["v"][active], state["t"][active]
        sel = torch.zeros_like(gf, dtype=torch.bool).scatter_(1, coords, True)
        m2, v2, step = adam_moments(
            m, v, gf, t + 1, self.betas
        )  # applied to the chosen coordinates
        m, v, t = torch.where(sel, m2, m), torch.where(sel, v2, v), torch.where(sel, t + 1, t)
        state["m"][active], state["v"][active], state["t"][active] = m, v, t
        step = torch.where(sel, step, torch.zeros_like(step))
        return (x.flatten(1) - self.lr * step).view_as(x), spent
