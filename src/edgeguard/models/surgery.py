"""Model surgery shared by the passes that reshape a model (the compiler's shrinking, whole-graph
channel pruning) and the tools that look inside one: replacing a submodule, slicing a conv's
filters or input channels, and reading the inputs of its layers."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import masked_weight


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted path) of ``root`` by ``new``."""
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def slice_conv(
    conv: nn.Module, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None
) -> nn.Module:
    """A new conv of ``conv``'s type holding the filters ``out_keep`` and input channels
    ``in_keep`` (index tensors; None: all) of its weight with the pruning mask applied, its bias
    sliced alike, in ``conv``'s train/eval mode.  A depthwise conv (one group per channel) keeps
    one group per kept channel: give ``out_keep`` only."""
    w = masked_weight(conv)
    b = conv.bias.detach() if conv.bias is not None else None
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and (not depthwise or in_keep is not None):
        raise ConfigError("slice_conv: of grouped convs only depthwise ones, and by out_keep only")
    if out_keep is not None:
        w, b = w[out_keep], (b[out_keep] if b is not None else None)
    if in_keep is not None:
        w = w[:, in_keep]
    cin = w.shape[0] if depthwise else w.shape[1]
    new = type(conv)(
        cin,
        w.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        cin if depthwise else 1,
        b is not None,
        conv.padding_mode,
    )
    new.weight.data = w.contiguous()
    if b is not None:
        new.bias.data = b.clone()
    return new.train(conv.training)


def layer_inputs(model: nn.Module, x: torch.Tensor, types) -> dict[str, torch.Tensor]:
    """The input of each module of ``types`` in ``model(x)`` (its first call), by module name."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(mod, args) -> None:  # returns None: the call's inputs stay as they are
            seen.setdefault(name, args[0].detach())

        return hook

    handles = [
        m.register_forward_pre_hook(keep(n))
        for n, m in model.named_modules()
        if isinstance(m, types)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen
