"""Filter pruning: a unit is one output filter (a row of the GEMM matrix ``W[F, C*k]``)."""

from __future__ import annotations

import torch

from .base import SparsityScheme, register_scheme


@register_scheme
class FilterSparsity(SparsityScheme):
    name = "filter"

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.arange(f), torch.zeros(c, dtype=torch.int64), torch.zeros(k, dtype=torch.int64)
