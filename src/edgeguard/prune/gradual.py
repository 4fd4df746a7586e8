"""Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017): during the
regularisation stage every layer's rate rises from 0 to its target along
``r_e = r * (1 - (1 - e / ramp_epochs) ** exponent)`` after epoch ``e``; the units with the smallest
norms at that rate are masked, and training goes on with the sparser network.  For pretrained
compact networks that one-shot pruning destroys (a MobileNetV3 detector loses all of its AP50 at 2x
fewer MACs in one step): the network adapts while units go, with no penalty term.

``criterion="output-error"`` ranks units by the output error their removal causes (weights scaled by
the statistics of each layer's inputs, gathered during the training epochs, :mod:`.importance`)
over all layers at once, so the per-layer rates follow from the MAC budget: the share of the
budget's MACs removed rises along the same schedule."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..models.flops import FlopsReport
from ..sparsity import SparsityError, SparsityScheme
from ..sparsity.model import attach_masks
from .base import Pruner, register_pruner
from .importance import InputStatistics, output_error_masks

CRITERIA = ("magnitude", "output-error")


@register_pruner
class GradualPruner(Pruner):
    """``ramp_epochs``: regularisation epochs over which the rates reach their targets (give the
    stage at least that many; a shorter stage ends with the rest removed at once by hard pruning);
    ``exponent``: the schedule's power (3: fast early, slow near the target; 1: linear);
    ``criterion``: ``"magnitude"`` (each layer at its own target rate, smallest unit norms first)
    or ``"output-error"`` (one ranking over the layers by relative output error per MAC, to the MAC
    budget of ``run_pruning``'s ``flops_reduction`` or rates)."""

    name = "gradual"
    regularizes: ClassVar[bool] = True

    def __init__(
        self,
        scheme: str | SparsityScheme = "kgs",
        ramp_epochs: int = 4,
        exponent: float = 3.0,
        criterion: str = "magnitude",
        **scheme_options: Any,
    ) -> None:
        super().__init__(scheme, **scheme_options)
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 1:
            raise SparsityError(f"ramp_epochs must be an integer >= 1, got {ramp_epochs!r}")
        if not 0 < float(exponent) <= 10:
            raise SparsityError(f"exponent must be in (0, 10], got {exponent!r}")
        if criterion not in CRITERIA:
            raise SparsityError(
                f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}"
            )
        self.ramp_epochs, self.exponent, self.criterion = ramp_epochs, float(exponent), criterion
        self.epochs_done = 0
        self.stats: InputStatistics | None = None

    def options(self) -> dict[str, Any]:
        return {
            "ramp_epochs": self.ramp_epochs,
            "exponent": self.exponent,
            "criterion": self.criterion,
        }

    def setup(
        self,
        model: nn.Module,
        rates: dict[str, float],
        target_macs: float | None = None,
        flops: FlopsReport | None = None,
    ) -> None:
        super().setup(model, rates)
        if self.criterion == "output-error":
            if target_macs is None or flops is None:
                raise SparsityError(
                    "criterion 'output-error' needs the MAC budget: use run_pruning"
                )
            self.flops, self.target_macs = flops, float(target_macs)
            if self.stats is not None:
                self.stats.remove()
            self.stats = InputStatistics(self.layers)

    def _masks(self, share: float) -> dict[str, torch.Tensor]:
        if self.criterion == "magnitude":
            return {
                name: self.scheme.mask(layer.weight.detach(), self.target_rates[name] * share).cpu()
                for name, layer in self.layers.items()
            }
        remove = (self.flops.dense_macs - self.target_macs) * share
        return {
            n: m.cpu()
            for n, m in output_error_masks(
                self.layers, self.scheme, self.stats, self.flops, remove
            ).items()
        }

    def share(self, epochs_done: int) -> float:
        """The share of each layer's target rate reached after ``epochs_done`` epochs, in [0, 1]."""
        t = min(epochs_done / self.ramp_epochs, 1.0)
        return 1.0 - (1.0 - t) ** self.exponent

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        self.epochs_done = epoch + 1
        share = self.share(self.epochs_done)
        attach_masks(model, self._masks(share))
        if self.stats is not None:
            self.stats.new_round()  # the next ranking reads the sparser network's inputs
        metrics["gradual_share"] = share

    def final_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.stats is None:
            return self._masks(1.0)
        if not self.stats.ready():
            raise SparsityError(
                "criterion 'output-error' ranks units by statistics of training epochs: give "
                "run_pruning a regularize stage (the ramp) before hard pruning"
            )
        masks = self._masks(1.0)
        self.stats.remove()
        return masks

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epochs_done": self.epochs_done}
        if self.stats is not None:
            state["stats"] = self.stats.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state.get("epochs_done", 0))
        if self.stats is not None and "stats" in state:
            self.stats.load_state_dict(state["stats"])
