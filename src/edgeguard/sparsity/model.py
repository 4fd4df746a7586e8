"""Model-level structured pruning: choose layers and rates, compute masks, keep them applied."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..masks import apply_masks, drop_mask, masks_of, set_mask
from ..models.flops import FlopsReport, count_flops
from .base import (
    SUPPORTED_LAYERS,
    SparsityError,
    SparsityScheme,
    check_layer,
    check_rate,
    get_scheme,
)


def prunable_layers(model: nn.Module, include_classifier: bool = False) -> list[str]:
    """Names of the layers a scheme can prune: every Conv1d/2d/3d with groups=1 and every Linear,
    except the last Linear (the classifier) unless ``include_classifier``."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, SUPPORTED_LAYERS) and getattr(m, "groups", 1) == 1:
            names.append(name)
    if not include_classifier:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1] in names:
            names.remove(linears[-1])
    return names


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise SparsityError(
            f"no layer named {name!r} in the model; prunable layers: {', '.join(prunable_layers(model))}"
        )
    check_layer(modules[name], name)
    return modules[name]


def attach_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Attach masks to their layers (the :mod:`edgeguard.masks` buffer, so it follows
    ``.to(device)`` and DDP) and zero the removed weights.  ``count_flops`` and the training engine read
    the attached masks."""
    for name, mask in masks.items():
        m = _module(model, name)
        if tuple(mask.shape) != tuple(m.weight.shape):
            raise SparsityError(
                f"{name}: mask shape {tuple(mask.shape)} does not match weight shape "
                f"{tuple(m.weight.shape)}"
            )
        set_mask(m, mask)
    apply_masks(model)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``model``'s layers, ``{layer name: bool mask}``."""
    return masks_of(model)


def detach_masks(model: nn.Module) -> None:
    """Remove attached masks (the weights stay as they are)."""
    for m in model.modules():
        drop_mask(m)


def load_profile(path: str | Path) -> dict[str, float]:
    """Read a per-layer rate profile: a YAML (or JSON) mapping ``layer name: rate`` (like RT3D's
    profiles); a top-level ``rates:`` key is also accepted."""
    path = Path(path)
    if not path.is_file():
        raise SparsityError(f"profile file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SparsityError(f"profile {path} is not valid YAML: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("rates"), dict):
        data = data["rates"]
    if not isinstance(data, dict) or not data:
        raise SparsityError(f"profile {path} must map layer names to rates, e.g. 'conv2: 0.6'")
    return {str(k): check_rate(v, f"rate of {k} in {path}") for k, v in data.items()}


@dataclass
class PruneResult:
    """Masks and bookkeeping of one ``prune_model`` call."""

    masks: dict[str, torch.Tensor]
    rates: dict[str, float]
    scheme: SparsityScheme
    flops: FlopsReport | None = None


def compute_masks(
    model: nn.Module, scheme: SparsityScheme, rates: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    masks = {}
    for name, rate in rates.items():
        m = _module(model, name)
        masks[name] = scheme.mask(m.weight.detach(), rate).cpu()
    return masks


def _rates_for_flops(
    model: nn.Module,
    scheme: SparsityScheme,
    layers: list[str],
    target: float,
    input_shape: tuple[int, ...],
) -> dict[str, float]:
    """Smallest uniform rate over ``layers`` whose kept MACs reach ``dense / target`` (bisection;
    kept MACs never increase with the rate)."""
    base = count_flops(model, input_shape, masks={})
    goal = base.dense_macs / target
    by_name = {layer.name: layer for layer in base.layers}
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise SparsityError(f"layers {missing} are not run by the model on input {input_shape}")
    mods = dict(model.named_modules())
    # Per layer: weights removed after the first n units of the removal order, computed once.
    removed_cum = {}
    for n in layers:
        w = mods[n].weight.detach()
        lay = scheme.layout(w.shape)
        order = scheme.removal_order(w)
        removed_cum[n] = torch.cat([torch.zeros(1, dtype=torch.int64), lay.sizes[order].cumsum(0)])
    fixed = sum(layer.kept_macs for layer in base.layers if layer.name not in removed_cum)

    def kept(rate: float) -> float:
        total = fixed
        for n, cum in removed_cum.items():
            n_units = cum.numel() - 1
            frac_removed = cum[round(rate * n_units)].item() / cum[-1].item()
            total += (1.0 - frac_removed) * by_name[n].dense_macs
        return total

    hi = 1.0 - 1e-9
    if kept(hi) > goal:
        best = base.dense_macs / kept(hi)
        raise SparsityError(
            f"a FLOPs reduction of {target}x is out of reach with scheme {scheme.name!r} on layers "
            f"{layers}: at most {best:.2f}x (the layers left dense cost {fixed / 1e6:.1f} MMACs)"
        )
    lo = 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if kept(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return dict.fromkeys(layers, hi)


def resolve_rates(
    model: nn.Module,
    scheme: SparsityScheme,
    rates: float | Mapping[str, float] | str | Path | None = None,
    flops_reduction: float | None = None,
    input_shape: tuple[int, ...] | None = None,
    layers: Iterable[str] | None = None,
) -> dict[str, float]:
    """Per-layer rates from exactly one of: one rate for ``layers``, a ``{layer: rate}`` dict, a YAML
    profile path, or a global ``flops_reduction`` (one uniform rate over ``layers`` for
    ``input_shape``).  Everything is validated here, so callers fail before any training."""
    if (rates is None) == (flops_reduction is None):
        raise SparsityError("give exactly one of rates (or a profile) and flops_reduction")
    if isinstance(rates, str | Path):
        rates = load_profile(rates)
    if isinstance(rates, Mapping):
        layers = list(rates) if layers is None else layers
    layer_list = list(layers) if layers is not None else prunable_layers(model)
    if not layer_list:
        raise SparsityError(
            "the model has no prunable layers (Conv1d/2d/3d with groups=1, or Linear other than the "
            "classifier)"
        )
    for name in layer_list:
        _module(model, name)
    if flops_reduction is not None:
        if isinstance(flops_reduction, bool) or not isinstance(flops_reduction, int | float):
            raise SparsityError(f"flops_reduction must be a number >= 1, got {flops_reduction!r}")
        if not 1.0 <= flops_reduction < float("inf"):
            raise SparsityError(
                f"flops_reduction must be a finite number >= 1 (dense/kept MACs), got {flops_reduction}"
            )
        if input_shape is None:
            raise SparsityError("flops_reduction needs input_shape (batch included) to count MACs")
        return _rates_for_flops(model, scheme, layer_list, float(flops_reduction), input_shape)
    if isinstance(rates, Mapping):
        return {str(k): check_rate(v, f"rate of {k}") for k, v in rates.items()}
    return dict.fromkeys(layer_list, check_rate(rates))


def prune_model(
    model: nn.Module,
    scheme: str | SparsityScheme,
    rates: float | Mapping[str, float] | str | Path | None = None,
    flops_reduction: float | None = None,
    input_shape: tuple[int, ...] | None = None,
    layers: Iterable[str] | None = None,
    attach: bool = True,
    **scheme_options: Any,
) -> PruneResult:
    """One-shot magnitude pruning of ``model`` with a structured ``scheme``.

    Give exactly one of:
        rates: one rate for every layer in ``layers``, a ``{layer name: rate}`` dict, or the path of a
            YAML profile; a rate is the fraction of units removed, in [0, 1).
        flops_reduction: a global target ``X >= 1`` (dense MACs / kept MACs over the whole model for
            ``input_shape``); one uniform rate is found for ``layers`` by bisection.

    Args:
        layers: layers to prune (default ``prunable_layers(model)``).
        attach: attach the masks to the model and zero the removed weights (default).

    Returns:
        ``PruneResult`` with the masks ``{layer name: bool mask}``, the per-layer rates and, when
        ``input_shape`` is given, the FLOPs report of the pruned model.
    """
    scheme = get_scheme(scheme, **scheme_options)
    rate_map = resolve_rates(model, scheme, rates, flops_reduction, input_shape, layers)
    masks = compute_masks(model, scheme, rate_map)
    if attach:
        attach_masks(model, masks)
    flops = count_flops(model, input_shape, masks=masks) if input_shape is not None else None
    return PruneResult(masks=masks, rates=rate_map, scheme=scheme, flops=flops)
