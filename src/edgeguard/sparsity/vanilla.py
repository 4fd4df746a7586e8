"""Vanilla kernel-group sparsity (RT3D): kernels are grouped ``gm`` filters x ``gn`` input channels and
each group of whole kernels is removed together."""

from __future__ import annotations

import torch

from .base import register_scheme
from .groups import KernelGroupScheme


@register_scheme
class VanillaSparsity(KernelGroupScheme):
    name = "vanilla"

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.arange(f) // self.gm,
            torch.arange(c) // self.gn,
            torch.zeros(k, dtype=torch.int64),
        )
