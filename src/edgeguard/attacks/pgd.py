"""PGD (Madry et al., 2018): projected gradient ascent on the loss inside the eps-ball, with a random
start and restarts; per sample the best restart (successful, else highest loss) is kept."""

from __future__ import annotations

import torch

from .base import (
    Attack,
    attack_loss,
    check_norm,
    check_positive,
    check_steps,
    input_gradient,
    normalized,
    project,
)


class PGD(Attack):
    name = "pgd"
    norms = ("linf", "l2")

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        seed: int | None = 0,
    ) -> None:
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.steps = check_steps(steps)
        self.restarts = check_steps(restarts, "restarts")
        self.alpha = check_positive(alpha, "alpha") if alpha is not None else 2.5 * self.eps / steps
        self.norm = check_norm(norm, self.norms)
        self.random_start = random_start
        self.seed = seed

    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        if self.norm == "linf":
            noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * self.eps
        else:  # uniform in the L2 ball
            d = torch.randn(x.shape, generator=gen)
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            r = torch.rand(len(x), generator=gen) ** (1.0 / x[0].numel())
            noise = d * (r * self.eps).view(-1, *[1] * (x.dim() - 1))
        return (x + noise.to(x.device)).clamp(0, 1)

    def _perturb(self, model, x, y, target):
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        best = x.clone()
        best_loss = torch.full((len(x),), -float("inf"))
        best_ok = torch.zeros(len(x), dtype=torch.bool)
        for _ in range(self.restarts):
            x_adv = self._start(x, gen)
            for _ in range(self.steps):
                g = input_gradient(model, x_adv, y, target)
                step = x_adv + self.alpha * normalized(g, self.norm)
                x_adv = (x + project(step - x, self.eps, self.norm)).clamp(0, 1).detach()
            with torch.no_grad():
                logits = model(x_adv)
                loss = attack_loss(logits, y, target)
                pred = logits.argmax(1)
                ok = pred == target if target is not None else pred != y
            better = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
            best[better] = x_adv[better]
            best_loss = torch.where(better, loss, best_loss)
            best_ok |= ok
        queries = torch.full((len(x),), self.restarts * (self.steps + 1), dtype=torch.long)
        return best, queries
