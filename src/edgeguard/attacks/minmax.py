"""Min-max attack over an ensemble (Wang et al., 2021, "Adversarial attack generation empowered by
min-max optimization"): find one perturbation that fools all K models by solving

    min_{delta in ball}  max_{w in simplex}  sum_i w_i f_i(x + delta) - gamma/2 ||w - 1/K||^2

with f_i the C&W margin of model i (<= 0 once model i is fooled).  Alternating steps: projected
gradient descent on delta with the current weights, projected gradient ascent on w (per sample),
so the weights move to the models that are hardest to fool; gamma pulls them back toward uniform.
``weighting="average"`` keeps w = 1/K (the usual ensemble attack), the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .base import (
    Attack,
    AttackError,
    AttackResult,
    check_norm,
    check_positive,
    check_steps,
    distortions,
    normalized,
    project,
)
from .cw import margin


class Ensemble(nn.Module):
    """K classifiers on the same inputs; ``forward`` returns their logits stacked ``[K, N, C]``."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) < 2:
            raise AttackError(f"an ensemble needs at least 2 models, got {len(models)}")
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models])


def project_simplex(w: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``w [N, K]`` onto the probability simplex."""
    u, _ = torch.sort(w, dim=1, descending=True)
    css = u.cumsum(1) - 1
    k = torch.arange(1, w.shape[1] + 1, dtype=w.dtype)
    cond = u - css / k > 0
    rho = cond.float().cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(w.dtype)
    return (w - theta).clamp_min(0)


@dataclass
class MinMaxResult(AttackResult):
    """:class:`AttackResult` plus ``weights [N, K]`` (final model weights) and ``fooled [N, K]``."""

    weights: torch.Tensor | None = None
    fooled: torch.Tensor | None = None


class MinMaxPGD(Attack):
    name = "minmax-pgd"
    norms = ("linf", "l2")

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 50,
        alpha: float | None = None,
        norm: str = "linf",
        weighting: str = "minmax",
        beta: float = 0.5,
        gamma: float = 1.0,
        kappa: float = 0.0,
    ) -> None:
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.steps = check_steps(steps)
        self.alpha = check_positive(alpha, "alpha") if alpha is not None else 2.5 * self.eps / steps
        self.norm = check_norm(norm, self.norms)
        if weighting not in ("minmax", "average"):
            raise AttackError(f"weighting must be 'minmax' or 'average', got {weighting!r}")
        self.weighting = weighting
        self.beta = check_positive(beta, "beta")
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)

    def run(self, model, inputs, labels, target=None) -> MinMaxResult:
        if not isinstance(model, Ensemble):
            raise AttackError("MinMaxPGD attacks an Ensemble([model_1, ..., model_K])")
        x, y, t = self._validate(model, inputs, labels, target)
        modes = [m.training for m in model.models]
        model.eval()
        try:
            x_adv, w, queries = self._perturb(model, x, y, t)
            with torch.no_grad():
                pred = model(x_adv).argmax(2)  # [K, N]
        finally:
            for m, mode in zip(model.models, modes, strict=True):
                m.train(mode)
        fooled = (pred == t if t is not None else pred != y).T  # [N, K]
        return MinMaxResult(x_adv, fooled.all(1), distortions(x_adv - x), queries, w, fooled)

    def _perturb(self, model, x, y, target):
        k = len(model.models)
        n = len(x)
        w = torch.full((n, k), 1.0 / k)
        x_adv = x.clone()
        for _ in range(self.steps):
            xv = x_adv.detach().requires_grad_(True)
            f = torch.stack(
                [margin(m(xv), y, target, self.kappa) for m in model.models], 1
            )  # [N, K]
            (g,) = torch.autograd.grad((w * f).sum(), xv)
            step = xv.detach() - self.alpha * normalized(g, self.norm)  # descend the weighted cost
            x_adv = (x + project(step - x, self.eps, self.norm)).clamp(0, 1)
            if self.weighting == "minmax":  # ascend in w: weight the models the attack fails on
                w = project_simplex(w + self.beta * (f.detach() - self.gamma * (w - 1.0 / k)))
        return x_adv.detach(), w, torch.full((n,), self.steps * k, dtype=torch.long)


class MinMaxWeights:
    """Weights over K losses (attacks, detectors, domains) of a min-max problem
    ``min_x max_{w in simplex} sum_k w_k L_k(x) - gamma/2 |w - 1/K|^2``: the loss is ``sum_k w_k L_k``;
    after each call ``w`` ascends ``L - gamma (w - 1/K)`` by ``beta`` and is projected onto the
    simplex (``"minmax"``), or stays uniform (``"average"``).  ``ascend``, when given, is the
    ``[K]`` quantity the weights ascend in place of ``L`` (e.g. each model's share of inputs it still
    gets right: one scale for all K, where their losses need not be)."""

    def __init__(
        self, k: int, weighting: str = "minmax", beta: float = 0.5, gamma: float = 1.0
    ) -> None:
        if weighting not in ("minmax", "average"):
            raise AttackError(f"weighting must be 'minmax' or 'average', got {weighting!r}")
        if beta <= 0 or gamma < 0:
            raise AttackError(f"need beta > 0 and gamma >= 0, got {beta}, {gamma}")
        self.k, self.weighting, self.beta, self.gamma = k, weighting, beta, gamma
        self.weights = torch.full((k,), 1.0 / k)

    def __call__(self, losses: torch.Tensor, ascend: torch.Tensor | None = None) -> torch.Tensor:
        """``losses``: ``[K]``; returns ``sum_k w_k L_k`` (before this call's ascent step)."""
        if losses.shape != (self.k,) or (ascend is not None and ascend.shape != (self.k,)):
            shapes = (tuple(losses.shape), None if ascend is None else tuple(ascend.shape))
            raise AttackError(f"need [{self.k}] losses (and ascend), got shapes {shapes}")
        loss = (self.weights.to(losses.dtype) * losses).sum()
        if self.weighting == "minmax":
            target = losses if ascend is None else ascend
            step = target.detach().float() - self.gamma * (self.weights - 1.0 / self.k)
            self.weights = project_simplex((self.weights + self.beta * step)[None])[0]
        return loss

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state["weights"].clone()
