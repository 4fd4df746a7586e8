"""ZO-Adam (Chen et al., 2019): Adam's update driven by a random-direction gradient estimate."""

from __future__ import annotations

import torch

from ...validation import check_number
from ..base import AttackError, check_steps
from .base import ZOAttack
from .estimators import check_kind, random_estimate


def adam_moments(
    m: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    t: torch.Tensor | int,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam's moments after gradient ``g`` and the bias-corrected step direction (multiply by the
    learning rate and subtract): ``(m, v, mhat / (sqrt(vhat) + 1e-8))``; ``t``: the step count
    after this update (>= 1), a number or a tensor broadcastable to ``g``.  Every ZO optimiser here
    (ZO-Adam, ZOO, the T-shirt's ZO trainer) uses this one update."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return m, v, (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)


class ZOAdam(ZOAttack):
    name = "zo-adam"

    def __init__(self, q: int = 10, kind: str = "gaussian", betas=(0.9, 0.999), **kw) -> None:
        super().__init__(**kw)
        self.q, self.kind = check_steps(q, "q (random directions per estimate)"), check_kind(kind)
        if not (isinstance(betas, list | tuple) and len(betas) == 2):
            raise AttackError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = tuple(
            check_number(b, "betas", minimum=0.0, maximum=1.0, open_max=True, error=AttackError)
            for b in betas
        )

    def _step(self, state, f, x, gen, active, fx):
        g, spent = random_estimate(f, x, self.q, self.mu, self.kind, gen, fx=fx)
        n_all = len(active)
        if "m" not in state:
            state["m"] = torch.zeros(n_all, *x.shape[1:])
            state["v"] = torch.zeros(n_all, *x.shape[1:])
            state["t"] = torch.zeros(n_all)
        t = state["t"][active] + 1
        view = (-1,) + (1,) * (x.dim() - 1)
        m, v, step = adam_moments(
            state["m"][active], state["v"][active], g, t.view(view), self.betas
        )
        state["m"][active], state["v"][active], state["t"][active] = m, v, t
        return x - self.lr * step, spent
