"""One-shot magnitude pruning: no regularisation; the units with the smallest L2 norms are removed,
then the model is fine-tuned with the masks applied.  The baseline every other pruner is compared with."""

from __future__ import annotations

from typing import ClassVar

from .base import Pruner, register_pruner


@register_pruner
class MagnitudePruner(Pruner):
    name = "magnitude"
    regularizes: ClassVar[bool] = False
