"""Shared test helpers for the compiler tests."""

from __future__ import annotations

import torch
from torch import nn

from edgeguard.sparsity import get_scheme


def mask_convs(model: nn.Module, scheme: str = "kgs", rate: float = 0.5) -> nn.Module:
    """Zero ``rate`` of every conv's weights of ``model`` by ``scheme``'s magnitude mask, in place
    (the masked model the compiled one must equal); returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                m.weight *= get_scheme(scheme).mask(m.weight, rate)
    return model
