"""RT3D's reweighted group regularisation.

During training the loss gets ``lam * sum_u alpha_u * ||W_u||^2`` over the units ``u`` of every pruned
layer, with ``alpha_u = 1 / (||W_u||^2 + eps)`` held constant between reweighting steps and recomputed
from the current weights every ``reweight_every`` epochs.  A unit's penalty gradient is
``2 * lam * alpha_u * W_u``: small units get a large push toward zero, large units almost none (a
smooth surrogate of the group-l0 count).  The penalty is computed on the live parameters, so it reaches
the optimiser; only ``alpha`` is a constant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..sparsity import SparsityError, SparsityScheme
from .base import Pruner, check_positive, register_pruner


@register_pruner
class ReweightedPruner(Pruner):
    """Args:
    scheme: the sparsity structure (unit definition).
    lam: penalty strength lambda > 0 (the penalty is about ``lam * number of units`` right after
        each reweighting).
    eps: eps > 0 in alpha = 1 / (||W_u||^2 + eps): units smaller than sqrt(eps) are all pushed with
        about the same strength 1/eps.
    reweight_every: recompute alpha every this many epochs (>= 1).
    """

    name = "reweighted"

    def __init__(
        self,
        scheme: str | SparsityScheme = "kgs",
        lam: float = 1e-3,
        eps: float = 1e-3,
        reweight_every: int = 1,
        **scheme_options: Any,
    ) -> None:
        super().__init__(scheme, **scheme_options)
        self.lam = check_positive(lam, "lam (reweighted penalty strength)")
        self.eps = check_positive(eps, "eps (reweighting floor)")
        if (
            isinstance(reweight_every, bool)
            or not isinstance(reweight_every, int)
            or reweight_every < 1
        ):
            raise SparsityError(f"reweight_every must be an integer >= 1, got {reweight_every!r}")
        self.reweight_every = reweight_every
        self.alpha: dict[str, torch.Tensor] = {}

    def options(self) -> dict[str, Any]:
        return {"lam": self.lam, "eps": self.eps, "reweight_every": self.reweight_every}

    def setup(self, model: nn.Module, rates: dict[str, float], **budget: Any) -> None:
        super().setup(model, rates)
        self.reweight()

    @torch.no_grad()
    def reweight(self) -> None:
        """alpha_u <- 1 / (||W_u||^2 + eps) from the current weights."""
        self.alpha = {
            name: 1.0 / (self.scheme.unit_sq_norms(m.weight.detach()) + self.eps)
            for name, m in self.layers.items()
        }

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = super().penalty(model)
        for name, m in self.layers.items():
            alpha = self.alpha[name].to(m.weight.device)
            total = total + (alpha * self.scheme.unit_sq_norms(m.weight)).sum()
        return self.lam * total

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        if (epoch + 1) % self.reweight_every == 0:
            self.reweight()

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": {k: v.cpu() for k, v in self.alpha.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "alpha" in state:
            self.alpha = dict(state["alpha"])
