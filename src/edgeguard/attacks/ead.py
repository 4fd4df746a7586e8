"""EAD (Chen et al., 2018): elastic-net attack, min c * f(x') + beta * ||x' - x||_1 + ||x' - x||_2^2
over x' in [0, 1]^n, solved by ISTA or FISTA (a gradient step on the smooth part, then the
projected shrinkage-thresholding operator), with a per-sample binary search over c.  The returned
example is the successful iterate with the smallest elastic-net ("en") or L1 ("l1") distortion."""

from __future__ import annotations

import torch

from .base import Attack, AttackError, check_positive, check_steps
from .cw import margin


def shrink(z: torch.Tensor, x0: torch.Tensor, beta: float) -> torch.Tensor:
    """Projected shrinkage-thresholding: soft-threshold ``z - x0`` by ``beta``, then clip to [0, 1]."""
    d = z - x0
    return (x0 + d.sign() * (d.abs() - beta).clamp_min(0)).clamp(0, 1)


class EAD(Attack):
    name = "ead"
    norms = ("l1", "l2")

    def __init__(
        self,
        c: float = 1.0,
        beta: float = 1e-2,
        kappa: float = 0.0,
        steps: int = 100,
        lr: float = 1e-2,
        binary_steps: int = 5,
        solver: str = "fista",
        decision: str = "en",
    ) -> None:
        self.c = check_positive(c, "c")
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)
        self.steps = check_steps(steps)
        self.lr = check_positive(lr, "lr")
        self.binary_steps = check_steps(binary_steps, "binary_steps")
        if solver not in ("ista", "fista"):
            raise AttackError(f"solver must be 'ista' or 'fista', got {solver!r}")
        if decision not in ("en", "l1"):
            raise AttackError(f"decision must be 'en' or 'l1', got {decision!r}")
        self.solver, self.decision = solver, decision
        self.norm = "l1"

    def _perturb(self, model, x, y, target):
        n = len(x)
        lo, hi = torch.zeros(n), torch.full((n,), float("inf"))
        c = torch.full((n,), self.c)
        best = x.clone()
        best_d = torch.full((n,), float("inf"))
        queries = torch.zeros(n, dtype=torch.long)
        for _ in range(self.binary_steps):
            xk = x.clone()
            yk = x.clone()
            succeeded = torch.zeros(n, dtype=torch.bool)
            for k in range(self.steps):
                lr = self.lr * (1 - k / self.steps) ** 0.5  # the paper's decaying step
                yv = yk.detach().requires_grad_(True)
                f = margin(model(yv), y, target, self.kappa)
                smooth = (c * f + (yv - x).flatten(1).pow(2).sum(1)).sum()
                (g,) = torch.autograd.grad(smooth, yv)
                queries += 1
                x_new = shrink(yv.detach() - lr * g, x, self.beta)
                momentum = k / (k + 3) if self.solver == "fista" else 0.0  # FISTA extrapolation
                yk = x_new + momentum * (x_new - xk)
                xk = x_new
                with torch.no_grad():
                    ok = margin(model(xk), y, target, self.kappa) <= 0
                    delta = (xk - x).flatten(1)
                    l1 = delta.abs().sum(1)
                    dist = l1 if self.decision == "l1" else self.beta * l1 + delta.pow(2).sum(1)
                    better = ok & (dist < best_d)
                    best[better] = xk[better]
                    best_d = torch.where(better, dist, best_d)
                    succeeded |= ok
            hi = torch.where(succeeded, torch.minimum(hi, c), hi)
            lo = torch.where(succeeded, lo, torch.maximum(lo, c))
            c = torch.where(hi < float("inf"), (lo + hi) / 2, c * 10)
        return best, queries
