"""Multiply-accumulate (MAC) counting for Conv1d/2d/3d and Linear layers, aware of sparsity masks.

Convention (the one used for C3D's 38.5 GMACs): a conv costs ``(number of weights) x (output
positions)`` MACs, padding taps included; a Linear costs ``in x out`` per row.  Biases, BatchNorm,
activations and pooling are not counted.  A layer carrying a mask (:mod:`edgeguard.masks`) (set by
``edgeguard.sparsity.attach_masks``) counts only its kept weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import mask_of

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerFlops:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    output_positions: int
    dense_macs: int
    kept_macs: int
    params: int
    kept_params: int

    @property
    def density(self) -> float:
        return self.kept_params / self.params if self.params else 1.0


@dataclass
class FlopsReport:
    """Per-layer and total MACs for one input shape (batch included)."""

    input_shape: tuple[int, ...]
    layers: list[LayerFlops] = field(default_factory=list)

    @property
    def dense_macs(self) -> int:
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def kept_macs(self) -> int:
        return sum(layer.kept_macs for layer in self.layers)

    @property
    def reduction(self) -> float:
        """Dense MACs / kept MACs (1.0 for an unpruned model)."""
        return self.dense_macs / max(self.kept_macs, 1)

    def __getitem__(self, name: str) -> LayerFlops:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def count_flops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: dict[str, torch.Tensor] | None = None,
) -> FlopsReport:
    """Count MACs of every Conv/Linear layer of ``model`` for an input of ``input_shape``.

    Args:
        model: any module; it is run once on zeros of ``input_shape`` (batch included) in eval mode
            under ``no_grad``; its training mode is restored afterwards.
        input_shape: e.g. ``(1, 3, 16, 112, 112)`` for one C3D clip.
        masks: optional ``{layer name: bool mask of the weight's shape}``; by default the masks
            attached to the layers (:mod:`edgeguard.masks`) are used.

    Returns:
        a ``FlopsReport`` with per-layer dense and kept MACs and parameter counts (weights only).
        A layer called several times (shared weights) is counted once per call.
    """
    if not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise ConfigError(
            f"input_shape must be positive integers with the batch, got {input_shape}"
        )
    names = {m: n for n, m in model.named_modules()}
    report = FlopsReport(tuple(input_shape))

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        w = module.weight
        mask = masks.get(name) if masks is not None else mask_of(module)
        kept = int(mask.sum()) if mask is not None else w.numel()
        if isinstance(module, nn.Linear):
            positions = math.prod(output.shape[:-1])
        else:
            positions = output.shape[0] * math.prod(output.shape[2:])
        report.layers.append(
            LayerFlops(
                name=name,
                kind=type(module).__name__,
                weight_shape=tuple(w.shape),
                output_positions=positions,
                dense_macs=w.numel() * positions,
                kept_macs=kept * positions,
                params=w.numel(),
                kept_params=kept,
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COUNTED)]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        model.eval()
        with torch.no_grad():
            try:
                model(torch.zeros(input_shape, device=device, dtype=dtype))
            except (RuntimeError, ValueError, IndexError) as err:
                from .check import input_error

                raise input_error(model, tuple(input_shape), err) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return report
