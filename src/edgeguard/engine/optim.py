"""Adam with steps relative to each filter's scale, for networks whose weight scales differ by
orders of magnitude (batch norm folded into the convolutions).

Adam moves every weight by about ``lr`` per step whatever its size.  In a deployed MobileNet the
batch norms' scales live in the conv weights, and layer RMS ranges over five orders of magnitude
(CenterNet-MobileNetV3: 1e-4 to 13): one ``lr`` rewrites the small layers while the large ones do
not move.  Here the Adam direction of each output slice ``p[i]`` (a filter; the whole tensor for
vectors) is multiplied by that slice's RMS, so ``lr`` is a relative change per step, and the
steps are equivariant to rescaling a filter (scaling ``W1`` by ``c`` and the next layer by
``1/c`` through a ReLU gives the same network after every step), as with LARS/LAMB's per-layer
trust ratio (You et al. 2017, 2019) or Madam (Bernstein et al. 2020), per filter.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RelativeAdam(torch.optim.Optimizer):
    """Adam (bias-corrected moments, L2 ``weight_decay`` added to the gradient) whose step on each
    output slice of a parameter (dim 0 of a tensor with 2+ dims; the whole of a vector) is scaled
    by the slice's RMS (at least ``floor``).  ``lr``: relative change per step (e.g. 1e-3)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        floor: float = 1e-12,
    ) -> None:
        if lr <= 0 or eps <= 0 or floor < 0 or weight_decay < 0:
            raise ValueError("need lr > 0, eps > 0, floor >= 0, weight_decay >= 0")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, floor=floor)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                direction = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                if p.dim() >= 2:
                    scale = p.flatten(1).square().mean(1).sqrt()
                    scale = scale.view(-1, *[1] * (p.dim() - 1))
                else:
                    scale = p.square().mean().sqrt()
                p.sub_(direction * scale.clamp_min(group["floor"]), alpha=group["lr"])
        return loss
