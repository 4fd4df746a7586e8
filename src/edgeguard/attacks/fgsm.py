"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size ``eps`` (L-inf), or one normalised
gradient step (L2, "FGM")."""

from __future__ import annotations

import torch

from .base import Attack, check_norm, check_positive, input_gradient, normalized


class FGSM(Attack):
    name = "fgsm"
    norms = ("linf", "l2")

    def __init__(self, eps: float = 8 / 255, norm: str = "linf") -> None:
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.norm = check_norm(norm, self.norms)

    def _perturb(self, model, x, y, target):
        g = input_gradient(model, x, y, target)
        x_adv = (x + self.eps * normalized(g, self.norm)).clamp(0, 1)
        return x_adv, torch.ones(len(x), dtype=torch.long)
