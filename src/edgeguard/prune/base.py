"""The pruner protocol: regularise during training -> hard prune to the target -> masked fine-tune.

A pruner is built with its settings and a sparsity scheme; the pipeline (``run_pruning``) calls
``setup`` once with the per-layer target rates, trains with ``penalty(model)`` added to the loss and
``on_epoch_end`` after every epoch, asks ``final_masks`` for the hard-pruning masks, and fine-tunes with
the masks applied.  Auxiliary variables (ADMM's Z and U, reweighting factors) live in
``state_dict()`` so an interrupted run resumes exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .. import validation
from ..registry import construct, lookup
from ..sparsity import SparsityError, SparsityScheme, get_scheme
from ..sparsity.base import check_layer


def check_positive(value: Any, what: str) -> float:
    return validation.check_positive(value, what, error=SparsityError)


class Pruner:
    """Base class: no regularisation, hard pruning to the target rates (that is magnitude pruning)."""

    name: ClassVar[str]
    regularizes: ClassVar[bool] = True

    def __init__(self, scheme: str | SparsityScheme = "kgs", **scheme_options: Any) -> None:
        self.scheme = get_scheme(scheme, **scheme_options)
        self.layers: dict[str, nn.Module] = {}
        self.target_rates: dict[str, float] = {}

    def options(self) -> dict[str, Any]:
        """The method's hyperparameters (JSON-serialisable)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}(scheme={self.scheme!r}{', ' if opts else ''}{opts})"

    def setup(self, model: nn.Module, rates: dict[str, float], **budget: Any) -> None:
        """Bind to ``model``'s layers named in ``rates`` (layer -> fraction of units to remove).
        ``budget`` carries ``target_macs`` and the dense ``flops`` report for methods that choose
        their own per-layer rates."""
        modules = dict(model.named_modules())
        for name in rates:
            if name not in modules:
                raise SparsityError(f"no layer named {name!r} in the model")
            check_layer(modules[name], name)
        self.layers = {n: modules[n] for n in rates}
        self.target_rates = dict(rates)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Regularisation term added to the training loss (a differentiable scalar)."""
        p = next(model.parameters())
        return p.new_zeros(())

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        """Update auxiliary variables after each regularisation epoch."""

    def final_rates(self, model: nn.Module) -> dict[str, float]:
        """Per-layer rates used for hard pruning (default: the targets given to ``setup``)."""
        return dict(self.target_rates)

    def final_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Hard-pruning masks ``{layer: bool mask}`` (default: the scheme's masks at ``final_rates``)."""
        return {
            name: self.scheme.mask(self.layers[name].weight.detach(), rate).cpu()
            for name, rate in self.final_rates(model).items()
        }

    @property
    def spec_scheme(self) -> SparsityScheme | None:
        """The one scheme every final mask follows (recorded and checked in saved specs), if any."""
        return self.scheme

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class SplittingPruner(Pruner):
    """Shared part of the splitting methods (ADMM, primal-proximal): the auxiliary copy ``Z`` of each
    pruned weight, the scaled dual ``U`` and the augmented-Lagrangian term ``rho/2 ||W - Z + U||^2``
    added to the loss during regularisation."""

    rho: float
    Z: dict[str, torch.Tensor]
    U: dict[str, torch.Tensor]

    def _init_splitting(self, rho: Any, rho_growth: Any, rho_max: Any, method: str) -> None:
        """Validate and set the penalty schedule: rho > 0, multiplied by rho_growth >= 1 after every
        epoch up to rho_max; start with no auxiliary variables."""
        self.rho = check_positive(rho, f"rho ({method} penalty)")
        self.rho_init = self.rho  # the setting; self.rho grows during training
        self.rho_growth = check_positive(rho_growth, "rho_growth")
        if self.rho_growth < 1:
            raise SparsityError(f"rho_growth must be >= 1, got {rho_growth}")
        self.rho_max = check_positive(rho_max, "rho_max")
        self.Z, self.U = {}, {}

    def grow_rho(self) -> None:
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = super().penalty(model)
        for name, m in self.layers.items():
            z, u = self.Z[name].to(m.weight.device), self.U[name].to(m.weight.device)
            total = total + (m.weight - z + u).square().sum()
        return 0.5 * self.rho * total

    def state_dict(self) -> dict[str, Any]:
        return {
            "Z": {k: v.cpu() for k, v in self.Z.items()},
            "U": {k: v.cpu() for k, v in self.U.items()},
            "rho": self.rho,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "Z" in state:
            self.Z, self.U, self.rho = dict(state["Z"]), dict(state["U"]), float(state["rho"])


_PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    _PRUNERS[cls.name] = cls
    return cls


def available_pruners() -> list[str]:
    return sorted(_PRUNERS)


def get_pruner(method: str, scheme: str | SparsityScheme | None = None, **options: Any) -> Pruner:
    """Build a pruner by method name (``available_pruners()``) with a scheme (default: the method's
    own, ``kgs`` for most, ``filter+column`` for primal-proximal); ``options`` go to the method (e.g.
    ``lam``) and to kernel-group schemes (``gm``, ``gn``)."""
    cls = lookup(_PRUNERS, method, "pruning method", SparsityError)
    args = () if scheme is None else (scheme,)
    # kernel-group sizes reach the scheme through the pruner's **scheme_options
    return construct(
        cls, method, "pruning method", SparsityError, *args, also=("gm", "gn"), **options
    )
