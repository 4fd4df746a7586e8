"""ADMM structured pruning (the lab's earlier method, used by RT3D's public code).

Problem: min f(W) s.t. W in S (at most ``U - round(rate*U)`` nonzero units per layer).  Split W = Z with
Z in S and use the scaled dual U:
  W-step: SGD on f(W) + rho/2 ||W - Z + U||^2   (the penalty below, for one epoch)
  Z-step: Z = Proj_S(W + U)                      (keep the largest-norm units)
  U-step: U = U + W - Z
with rho multiplied by ``rho_growth`` after every epoch (up to ``rho_max``), so W is pulled ever more
firmly onto the structured set before the hard pruning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..sparsity import SparsityScheme
from .base import SplittingPruner, register_pruner


@register_pruner
class ADMMPruner(SplittingPruner):
    """Args:
    rho: initial penalty rho > 0.
    rho_growth: factor >= 1 applied to rho after every epoch.
    rho_max: upper bound on rho.
    """

    name = "admm"

    def __init__(
        self,
        scheme: str | SparsityScheme = "kgs",
        rho: float = 1e-3,
        rho_growth: float = 1.5,
        rho_max: float = 1.0,
        **scheme_options: Any,
    ) -> None:
        super().__init__(scheme, **scheme_options)
        self._init_splitting(rho, rho_growth, rho_max, "ADMM")

    def options(self) -> dict[str, Any]:
        return {"rho": self.rho_init, "rho_growth": self.rho_growth, "rho_max": self.rho_max}

    def setup(self, model: nn.Module, rates: dict[str, float], **budget: Any) -> None:
        super().setup(model, rates)
        with torch.no_grad():
            for name, m in self.layers.items():
                w = m.weight.detach()
                self.Z[name] = self.scheme.project(w, rates[name])
                self.U[name] = torch.zeros_like(w)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        for name, m in self.layers.items():
            w = m.weight.detach()
            u = self.U[name].to(w.device)
            z = self.scheme.project(w + u, self.target_rates[name])
            self.Z[name], self.U[name] = z, u + w - z
        metrics["admm_residual"] = float(
            sum((m.weight.detach() - self.Z[n]).square().sum() for n, m in self.layers.items())
            ** 0.5
        )
        self.grow_rho()
