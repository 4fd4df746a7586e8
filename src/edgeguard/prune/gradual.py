"""Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017): during the
regularisation stage every layer's rate rises from 0 to its target along
``r_e = r * (1 - (1 - e / ramp_epochs) ** exponent)`` after epoch ``e``; the units with the smallest
norms at that rate are masked, and training goes on with the sparser network.  For pretrained
compact networks that one-shot pruning destroys (a MobileNetV3 detector loses all of its AP50 at 2x
fewer MACs in one step): the network adapts while units go, with no penalty term."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..sparsity import SparsityError, SparsityScheme
from ..sparsity.model import attach_masks
from .base import Pruner, register_pruner


@register_pruner
class GradualPruner(Pruner):
    """``ramp_epochs``: regularisation epochs over which the rates reach their targets (give the
    stage at least that many; a shorter stage ends with the rest removed at once by hard pruning);
    ``exponent``: the schedule's power (3: fast early, slow near the target)."""

    name = "gradual"
    regularizes: ClassVar[bool] = True

    def __init__(
        self,
        scheme: str | SparsityScheme = "kgs",
        ramp_epochs: int = 4,
        exponent: float = 3.0,
        **scheme_options: Any,
    ) -> None:
        super().__init__(scheme, **scheme_options)
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 1:
            raise SparsityError(f"ramp_epochs must be an integer >= 1, got {ramp_epochs!r}")
        if not 0 < float(exponent) <= 10:
            raise SparsityError(f"exponent must be in (0, 10], got {exponent!r}")
        self.ramp_epochs, self.exponent = ramp_epochs, float(exponent)
        self.epochs_done = 0

    def options(self) -> dict[str, Any]:
        return {"ramp_epochs": self.ramp_epochs, "exponent": self.exponent}

    def share(self, epochs_done: int) -> float:
        """The share of each layer's target rate reached after ``epochs_done`` epochs, in [0, 1]."""
        t = min(epochs_done / self.ramp_epochs, 1.0)
        return 1.0 - (1.0 - t) ** self.exponent

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None:
        self.epochs_done = epoch + 1
        share = self.share(self.epochs_done)
        masks = {
            name: self.scheme.mask(layer.weight.detach(), self.target_rates[name] * share).cpu()
            for name, layer in self.layers.items()
        }
        attach_masks(model, masks)
        metrics["gradual_share"] = share

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state.get("epochs_done", 0))
