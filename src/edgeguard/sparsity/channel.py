"""Channel pruning: a unit is one input channel, across all filters and kernel locations."""

from __future__ import annotations

import torch

from .base import SparsityScheme, register_scheme


@register_scheme
class ChannelSparsity(SparsityScheme):
    name = "channel"

    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros(f, dtype=torch.int64), torch.arange(c), torch.zeros(k, dtype=torch.int64)
