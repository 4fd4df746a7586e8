"""Printability and smoothness terms of physical patches (Sharif et al. 2016; Thys et al. 2019)."""

from __future__ import annotations

import torch


def default_palette(levels: int = 4) -> torch.Tensor:
    """``[levels^3, 3]`` printable colours: a regular grid in [0.1, 0.9]^3 (a printer's gamut is
    smaller than the screen's; replace with the colours of a printed and photographed chart)."""
    t = torch.linspace(0.1, 0.9, levels)
    return torch.cartesian_prod(t, t, t)


def non_printability(patch: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the distance to the nearest palette colour (Thys et al.'s form; Sharif
    et al.'s product over the palette vanishes numerically for large palettes); zero when every
    pixel is printable.  ``patch [3, h, w]`` or ``[B, 3, h, w]``."""
    p = patch.reshape(-1, 3, patch.shape[-2] * patch.shape[-1]).transpose(1, 2)  # [B, P, 3]
    d = (p[:, :, None, :] - palette.to(p)[None, None]).pow(2).sum(-1)  # [B, P, N]
    return d.min(-1).values.clamp_min(1e-12).sqrt().mean()


def total_variation(patch: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels."""
    dx = (patch[..., :, 1:] - patch[..., :, :-1]).abs().mean()
    dy = (patch[..., 1:, :] - patch[..., :-1, :]).abs().mean()
    return dx + dy
