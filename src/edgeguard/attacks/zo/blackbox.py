"""A black-box view of a model: outputs only, every query counted, gradients refused."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import EdgeguardError
from ..base import AttackError


class BlackBoxError(EdgeguardError, RuntimeError):
    """Something asked a black-box model for gradients."""


class BlackBox(nn.Module):
    """Wraps ``model`` so that only its outputs (``"probs"`` or ``"logits"``) can be observed.

    ``queries`` counts every input sample evaluated.  Inputs that require grad are refused, and the
    outputs carry no autograd history, so no gradient can leak through.
    """

    def __init__(self, model: nn.Module, output: str = "probs") -> None:
        super().__init__()
        if output not in ("probs", "logits"):
            raise AttackError(f"output must be 'probs' or 'logits', got {output!r}")
        self._model = model
        self.output = output
        self.queries = 0
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise BlackBoxError("this is a black-box model: it exposes outputs only, no gradients")
        self.queries += len(x)
        with torch.no_grad():
            out = self._model(x)
            return out.softmax(-1) if self.output == "probs" else out

    def parameters(self, recurse: bool = True):  # no handle on the weights either
        return iter(())
