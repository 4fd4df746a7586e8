"""Kernel-group structured (KGS) sparsity (RT3D): within a kernel group of ``gm`` filters x ``gn``
input channels, a unit is one kernel location, so every kernel of the group keeps the same locations.
In the location-major GEMM view ``W[F, k*C]`` each unit is one dense ``gm x gn`` block, which is what
the sparse compiler turns into speed."""

from __future__ import annotations

from typing import Any

import torch

from .base import SparsityScheme, register_scheme
from .groups import check_group_size


@register_scheme
class KernelGroupSparsity(SparsityScheme):
    name = "kgs"

    def __init__(self, gm: int = 8, gn: int = 4) -> None:
        self.gm = check_group_size(gm, "gm (filters per kernel group)")
        self.gn = check_group_size(gn, "gn (input channels per kernel group)")

    def options(self) -> dict[str, Any]:
        return {"gm": self.gm, "gn": self.gn}

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.arange(f) // self.gm, torch.arange(c) // self.gn, torch.arange(k)
