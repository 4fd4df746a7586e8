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


def pool_buffers(compiled) -> list[torch.Tensor]:
    """Every buffer (flat) of ``compiled``'s buffer pools, each pool once."""
    pools = {
        id(m.scratch): m.scratch for m in compiled.module.modules() if getattr(m, "scratch", None)
    }
    return [flat for pool in pools.values() for flat, *_ in pool._outputs]


def poison_pools(compiled) -> int:
    """Fill every buffer of ``compiled``'s pools with NaN (what a free buffer holds must never
    reach an output); returns how many buffers were filled."""
    filled = 0
    for flat in pool_buffers(compiled):
        flat.fill_(float("nan"))
        filled += 1
    return filled


def kept_calls(compiled) -> dict:
    """The kept CPU call (``_CpuCall``) of each layer of ``compiled`` that ran, by module name."""
    return {
        n: next(iter(m._cpu_calls.values()))
        for n, m in compiled.module.named_modules()
        if getattr(m, "_cpu_calls", None)
    }
