"""The pruning-mask contract every package shares (one home, no other module spells the name).

A pruned layer carries its mask as a non-persistent bool buffer named :data:`MASK` (same shape as
its ``weight``; ``True`` = kept), so the mask follows ``.to(device)`` and DDP but never enters a
``state_dict`` (checkpoints store masks by layer name).  The name differs from
``torch.nn.utils.prune``'s ``weight_mask`` on purpose: a model pruned by both keeps both apart.
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "edgeguard_mask"


def mask_of(module: nn.Module) -> torch.Tensor | None:
    """The mask attached to ``module`` (bool, shaped like its weight), or None."""
    return module._buffers.get(MASK)


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Attach ``mask`` (any dtype; stored as bool on the weight's device), replacing any other."""
    module._buffers.pop(MASK, None)
    module.register_buffer(MASK, mask.to(device=module.weight.device, dtype=torch.bool), False)


def drop_mask(module: nn.Module) -> None:
    """Remove ``module``'s mask if it has one (its weight stays as it is)."""
    module._buffers.pop(MASK, None)


def masked_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` with its mask applied (a detached copy)."""
    w = module.weight.detach()
    mask = mask_of(module)
    return w * mask if mask is not None else w.clone()


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Zero every weight removed by an attached mask (call after each optimiser step)."""
    for m in model.modules():
        mask = mask_of(m)
        if mask is not None:
            m.weight.mul_(mask)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every attached mask, ``{layer name: bool mask}``."""
    return {n: mask for n, m in model.named_modules() if (mask := mask_of(m)) is not None}
