"""An exponential moving average of a model's weights (Polyak averaging, as in TensorFlow's
``ExponentialMovingAverage`` and timm's ``ModelEma``): a smoother model than the last step's,
for evaluation and for the result of a short fine-tuning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..masks import apply_masks
from .checkpoint import CheckpointError


class WeightAverage:
    """``avg <- decay * avg + (1 - decay) * w`` over every floating-point entry of
    ``model.state_dict()`` (weights and batch-norm statistics), started from the model as it is.
    Masked weights stay zero in the average (both terms are zero there)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.avg = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average toward the model's current weights."""
        state = model.state_dict()
        for k, a in self.avg.items():
            a.lerp_(state[k].detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (masks re-applied)."""
        state = model.state_dict()
        for k, a in self.avg.items():
            state[k].copy_(a)
        apply_masks(model)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the average inside the block, its own weights again after it."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.avg}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                state = model.state_dict()
                for k, v in live.items():
                    state[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "avg": {k: v.cpu() for k, v in self.avg.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        avg = state.get("avg") if isinstance(state, dict) else None
        if not isinstance(avg, dict) or set(avg) != set(self.avg):
            raise CheckpointError("the checkpoint's weight average does not fit this model")
        for k, v in avg.items():
            if not isinstance(v, torch.Tensor) or v.shape != self.avg[k].shape:
                raise CheckpointError(f"the checkpoint's weight average of {k!r} has another shape")
            self.avg[k].copy_(v)
