"""Column pruning: a unit is one (input channel, kernel location) pair across all filters, i.e. one
column of the GEMM matrix ``W[F, C*k]`` (SS-Auto's column sparsity)."""

from __future__ import annotations

import torch

from .base import SparsityScheme, register_scheme


@register_scheme
class ColumnSparsity(SparsityScheme):
    name = "column"

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros(f, dtype=torch.int64), torch.arange(c), torch.arange(k)
