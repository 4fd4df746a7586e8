"""Kernel-group structured (KGS) sparsity (RT3D): within a kernel group of ``gm`` filters x ``gn``
input channels, a unit is one kernel location, so every kernel of the group keeps the same locations.
In the location-major GEMM view ``W[F, k*C]`` each unit is one dense ``gm x gn`` block, which is what
the sparse compiler turns into speed."""

from __future__ import annotations

import torch

from .base import register_scheme
from .groups import KernelGroupScheme


@register_scheme
class KernelGroupSparsity(KernelGroupScheme):
    name = "kgs"

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.arange(f) // self.gm, torch.arange(c) // self.gn, torch.arange(k)
