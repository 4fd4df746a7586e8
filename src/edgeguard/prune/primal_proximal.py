"""SS-Auto's primal-proximal structured pruning: several structures (rows = filters and columns by
default) at once, soft constraints, per-layer rates found automatically for one global FLOPs budget.

Problem (soft constraints: weighted group-lasso penalties instead of hard l0 constraints):

    min_W  f(W) + lam * sum_s sum_{g in units of s} c_g ||W_g||_2

over the structures ``s`` (e.g. rows and columns of each layer's ``W[F, C*k]``), with group weights
``c_g = sqrt(|g|) * rms(W_l) * (P_l / mean(P))^gamma`` (``rms(W_l)``: the layer's RMS weight at the
start, which makes the threshold dimensionless across layers; ``P_l``: output positions of the layer;
``gamma`` = ``flops_exponent``) so that units of costly layers are penalised more.  Splitting ``W = Z`` with the scaled dual ``U``:

    primal   SGD on  f(W) + rho/2 ||W - Z + U||^2                     (one epoch)
    proximal Z = prox_{(lam/rho) g}(W + U)                            (overlapping groups: Dykstra)
    dual     U = U + W - Z

The proximal operator of a sum of group-lasso terms with overlapping groups has no closed form; it is
computed exactly (up to ``dykstra_iters`` iterations) by the proximal Dykstra algorithm, cycling group
soft-thresholding over the structures.  The penalty level is automatic: after each epoch the threshold
``t = lam / rho`` is set by bisection to the smallest value whose proximal point meets the FLOPs
budget, so the per-layer rates follow from where the weight mass is, not from a hand-set profile.  Hard
pruning keeps the units that survive the proximal step applied to the final weights at that budget.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..sparsity import SparsityError, SparsityScheme, get_scheme
from .base import SplittingPruner, register_pruner

_KERNEL_GROUP = ("vanilla", "kgs")


def group_soft_threshold(
    z: torch.Tensor, scheme: SparsityScheme, t: float, weights: torch.Tensor, min_keep: float = 0.0
) -> torch.Tensor:
    """prox of ``t * sum_u weights_u ||z_u||``: each unit shrinks toward 0 by ``t * weights_u`` in
    norm and is zeroed when smaller.  With ``min_keep`` > 0 the threshold is capped so that at least
    that share of the units (the largest ``||z_u|| / weights_u``) stays nonzero."""
    lay = scheme.layout(z.shape)
    norms = lay.reduce(z.square()).sqrt()
    if min_keep > 0:
        ratio = norms / weights
        k = max(1, math.ceil(min_keep * ratio.numel()))
        t = min(t, float(ratio.topk(k).values[-1]) * (1 - 1e-6))
    factor = (1 - t * weights / norms.clamp_min(1e-30)).clamp_min(0)
    return z * lay.expand(factor)


def dykstra_prox(
    v: torch.Tensor,
    schemes: list[SparsityScheme],
    t: float,
    weights: list[torch.Tensor],
    iters: int,
    min_keep: float = 0.0,
) -> torch.Tensor:
    """prox of ``t * sum_s sum_u weights_{s,u} ||z_u^s||`` at ``v`` by proximal Dykstra (exact as
    ``iters`` grows; one structure needs one step)."""
    if len(schemes) == 1:
        return group_soft_threshold(v, schemes[0], t, weights[0], min_keep)
    x = v
    corrections = [torch.zeros_like(v) for _ in schemes]
    for _ in range(iters):
        for k, (scheme, w) in enumerate(zip(schemes, weights, strict=True)):
            y = group_soft_threshold(x + corrections[k], scheme, t, w, min_keep)
            corrections[k] = x + corrections[k] - y
            x = y
    return x


@register_pruner
class PrimalProximalPruner(SplittingPruner):
    """Args:
    scheme: the structures pruned together, ``"filter+column"`` (SS-Auto, default) or any
        ``+``-joined scheme names (one name gives plain group-lasso on that scheme).
    rho: initial augmented-Lagrangian penalty (> 0); rho_growth (>= 1) per epoch up to rho_max.
    dykstra_iters: iterations of the proximal Dykstra loop (>= 1).
    flops_exponent: gamma in the group weights ``sqrt(|g|) * (P_l / mean P)^gamma``: 0 ignores the
        compute cost of a layer (default: on digits, weighing by cost emptied the early layers), 1 weighs
        units by their MAC cost.
    debias: keep the magnitudes of ``W + U`` on the support chosen by the proximal step instead of
        the shrunk proximal point (group lasso shrinks surviving units by ``t * c_u`` in norm, which
        at a binding budget pulls the network far from any accurate point).
    ramp_epochs: the MAC budget of the proximal step goes geometrically from the dense cost to the
        target over this many epochs (0: the target at once); hard pruning always uses the target.
    min_keep: share of units, per layer and structure, that the threshold may never remove (in
        (0, 1]); without it a global threshold can empty a whole layer.
    gm, gn: kernel-group sizes for vanilla/kgs structures.
    """

    name = "primal-proximal"

    def __init__(
        self,
        scheme: str | SparsityScheme = "filter+column",
        rho: float = 1e-2,
        rho_growth: float = 1.5,
        rho_max: float = 1.0,
        dykstra_iters: int = 5,
        min_keep: float = 0.05,
        flops_exponent: float = 0.0,
        ramp_epochs: int = 5,
        debias: bool = True,
        **scheme_options: Any,
    ) -> None:
        if isinstance(scheme, SparsityScheme):
            self.schemes = [scheme]
        else:
            names = [n.strip() for n in str(scheme).split("+")]
            self.schemes = [
                get_scheme(n, **(scheme_options if n in _KERNEL_GROUP else {})) for n in names
            ]
        self.scheme = self.schemes[0]
        self.layers = {}
        self.target_rates = {}
        self._init_splitting(rho, rho_growth, rho_max, "primal-proximal")
        if (
            isinstance(dykstra_iters, bool)
            or not isinstance(dykstra_iters, int)
            or dykstra_iters < 1
        ):
            raise SparsityError(f"dykstra_iters must be an integer >= 1, got {dykstra_iters!r}")
        self.dykstra_iters = dykstra_iters
        if not (isinstance(min_keep, int | float) and 0 < min_keep <= 1):
            raise SparsityError(f"min_keep must be in (0, 1], got {min_keep!r}")
        self.min_keep = float(min_keep)
        if not (isinstance(flops_exponent, int | float) and 0 <= flops_exponent <= 2):
            raise SparsityError(f"flops_exponent must be in [0, 2], got {flops_exponent!r}")
        self.flops_exponent = float(flops_exponent)
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 0:
            raise SparsityError(f"ramp_epochs must be an integer >= 0, got {ramp_epochs!r}")
        self.ramp_epochs = ramp_epochs
        self.debias = bool(debias)
        self.dense_macs = 0.0
        self.budget = 0.0
        self.threshold = 0.0
        self.positions: dict[str, int] = {}
        self.fixed_macs = 0
        self.target_macs = 0.0
        self.weights: dict[str, list[torch.Tensor]] = {}

    @property
    def spec_scheme(self) -> SparsityScheme | None:
        return self.scheme if len(self.schemes) == 1 else None

    @property
    def structure(self) -> str:
        return "+".join(s.name for s in self.schemes)

    def options(self) -> dict[str, Any]:
        return {
            "structure": self.structure,
            "rho": self.rho_init,
            "rho_growth": self.rho_growth,
            "rho_max": self.rho_max,
            "dykstra_iters": self.dykstra_iters,
            "min_keep": self.min_keep,
            "flops_exponent": self.flops_exponent,
            "ramp_epochs": self.ramp_epochs,
            "debias": self.debias,
        }

    def setup(
        self,
        model: nn.Module,
        rates: dict[str, float],
        target_macs: float | None = None,
        flops=None,
    ) -> None:
        """``target_macs``: the MAC budget of the whole model; ``flops``: its dense ``FlopsReport``
        (for output positions).  Both are supplied by ``run_pruning``."""
        super().setup(model, rates)
        if target_macs is None or flops is None:
            raise SparsityError("primal-proximal needs the FLOPs budget: use run_pruning")
        by_name = {layer.name: layer for layer in flops.layers}
        missing = [n for n in self.layers if n not in by_name]
        if missing:
            raise SparsityError(f"layers {missing} are not run by the model")
        self.positions = {n: by_name[n].output_positions for n in self.layers}
        self.fixed_macs = sum(
            layer.kept_macs for layer in flops.layers if layer.name not in self.layers
        )
        self.target_macs = float(target_macs)
        self.dense_macs = float(flops.dense_macs)
        self.budget = self._budget(0)
        mean_pos = sum(self.positions.values()) / len(self.positions)
        self.weights = {}
        for name, m in self.layers.items():
            cost = (self.positions[name] / mean_pos) ** self.flops_exponent
            # the layer's RMS weight makes the threshold dimensionless: layers whose weights are
            # smaller by initialisation (large fan-in) are not emptied first
            scale = float(m.weight.detach().square().mean().sqrt().clamp_min(1e-12))
            self.weights[name] = [
                s.layout(m.weight.shape).sizes.double().sqrt().float() * cost * scale
                for s in self.schemes
            ]
        with torch.no_grad():
            v = {n: m.weight.detach() for n, m in self.layers.items()}
            self.threshold = self.solve_threshold(v, self.budget)
            self.Z = self.z_step(v, self.threshold)
            self.U = {n: torch.zeros_like(w) for n, w in v.items()}

    # ------------------------------------------------------------------ proximal step and budget
    def _budget(self, epochs_done: int) -> float:
        """MAC budget after ``epochs_done`` regularisation epochs (geometric ramp to the target)."""
        if self.ramp_epochs == 0 or epochs_done >= self.ramp_epochs:
            return self.target_macs
        frac = epochs_done / self.ramp_epochs
        return self.dense_macs * (self.target_macs / self.dense_macs) ** frac

    def prox(self, v: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
        return {
            n: dykstra_prox(
                x,
                self.schemes,
                t,
                [c.to(x.device) for c in self.weights[n]],
                self.dykstra_iters,
                self.min_keep,
            )
            for n, x in v.items()
        }

    def z_step(self, v: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
        """Z from ``v = W + U``: the proximal point, or with ``debias`` ``v`` on its support."""
        z = self.prox(v, t)
        if not self.debias:
            return z
        return {n: v[n] * self.kept_mask(x) for n, x in z.items()}

    def kept_mask(self, z: torch.Tensor) -> torch.Tensor:
        """Weights whose every unit (in every structure) survived the proximal step."""
        mask = torch.ones_like(z, dtype=torch.bool)
        for s in self.schemes:
            lay = s.layout(z.shape)
            norms = lay.reduce(z.detach().square())
            mask &= lay.expand(norms > 0)
        return mask

    def kept_macs(self, z: dict[str, torch.Tensor]) -> float:
        return self.fixed_macs + sum(
            float(self.kept_mask(x).sum()) * self.positions[n] for n, x in z.items()
        )

    def solve_threshold(self, v: dict[str, torch.Tensor], budget: float | None = None) -> float:
        """Smallest threshold t (bisection on log t) whose proximal point meets the MAC ``budget``
        (default: the target)."""
        budget = self.target_macs if budget is None else budget
        if self.kept_macs(v) <= budget:
            return 0.0
        hi = 1e-12
        for n, x in v.items():
            for s, c in zip(self.schemes, self.weights[n], strict=True):
                norms = s.layout(x.shape).reduce(x.square()).sqrt()
                hi = max(hi, float((norms / c.to(x.device)).max()))
        hi *= 1.0001  # every unit down to the min_keep floor
        if self.kept_macs(self.prox(v, hi)) > budget:
            raise SparsityError(
                f"the MAC budget {budget:.4g} cannot be met: the unpruned layers cost "
                f"{self.fixed_macs:.4g} and every pruned layer keeps at least min_keep="
                f"{self.min_keep} of its units"
            )
        lo = hi * 1e-6
        for _ in range(25):
            mid = math.sqrt(lo * hi)
            if self.kept_macs(self.prox(v, mid)) <= budget:
                hi = mid
            else:
                lo = mid
        return hi

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        w = {n: m.weight.detach() for n, m in self.layers.items()}
        v = {n: w[n] + self.U[n].to(w[n].device) for n in w}
        self.budget = self._budget(epoch + 1)
        self.threshold = self.solve_threshold(v, self.budget)
        self.Z = self.z_step(v, self.threshold)
        for n in w:
            self.U[n] = v[n] - self.Z[n]
        metrics["pp_lambda"] = self.threshold * self.rho
        metrics["pp_budget_reduction"] = self.dense_macs / self.budget
        metrics["pp_residual"] = float(sum((w[n] - self.Z[n]).square().sum() for n in w) ** 0.5)
        self.grow_rho()

    @torch.no_grad()
    def final_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The structure of the proximal point of the final weights at the budget."""
        w = {n: m.weight.detach() for n, m in self.layers.items()}
        z = self.prox(w, self.solve_threshold(w))
        return {n: self.kept_mask(x).cpu() for n, x in z.items()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "threshold": self.threshold, "budget": self.budget}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "threshold" in state:
            self.threshold = float(state["threshold"])
            self.budget = float(state.get("budget", self.target_macs))
