"""Finding a layer by name and reading (or replacing) its output during a forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import EdgeguardError


class ExplainError(EdgeguardError, ValueError):
    """Invalid input to an explanation: unknown layer, mismatched shapes, nothing to explain."""


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's submodules, as ``model.named_modules()`` spells them (root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str | nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` for a layer given by name or as the module itself.

    Raises :class:`ExplainError` listing the valid names when ``name`` is not a submodule."""
    modules = dict(model.named_modules())
    if isinstance(name, nn.Module):
        for n, m in modules.items():
            if m is name and n:
                return n, m
        raise ExplainError(f"{type(name).__name__} is not a submodule of this model")
    if name not in modules or not name:
        valid = ", ".join(layer_names(model))
        raise ExplainError(f"no layer named {name!r} in this model; valid layers: {valid}")
    return name, modules[name]


def last_linear(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (the classifier of a GAP + linear network)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ExplainError(
            f"the model has no nn.Linear; pass a layer (valid: {', '.join(layer_names(model))})"
        )
    return names[-1]


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    raise ExplainError(
        f"the layer returns {type(output).__name__}, not one tensor; pick a layer with a tensor output"
    )


@contextmanager
def capture(module: nn.Module, inputs: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collects the module's output (or its first input) of every forward pass into the yielded list;
    the tensors stay in the autograd graph."""
    store: list[torch.Tensor] = []

    def pre_hook(_mod, args):
        store.append(_first_tensor(args[0]))

    def hook(_mod, _args, out):
        out = _first_tensor(out)
        store.append(out)
        # the rest of the network gets a copy: a later in-place op (ReLU(inplace=True)) must not
        # overwrite the activation we keep, which stays in the graph for gradients
        return out.clone()

    if inputs:
        handle = module.register_forward_pre_hook(pre_hook)
    else:
        handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def replace_output(module: nn.Module, value: torch.Tensor) -> Iterator[None]:
    """Runs the forward pass with the module's output replaced by ``value`` (same shape), so that the
    rest of the network can be evaluated as a function of that layer's activation."""

    def hook(_mod, _args, out):
        out = _first_tensor(out)
        if out.shape != value.shape:
            raise ExplainError(
                f"replacement activation has shape {tuple(value.shape)}, the layer gives "
                f"{tuple(out.shape)}"
            )
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_images(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 3:
        raise ExplainError(f"{name} must be a floating-point tensor [N, C, ...]")
    return x


def check_labels(v: torch.Tensor, n: int, n_classes: int, name: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.dtype not in (torch.int64, torch.int32):
        raise ExplainError(f"{name} must be an integer tensor [N]")
    if v.shape != (n,):
        raise ExplainError(f"{name} has shape {tuple(v.shape)}; expected [{n}]")
    if n and (v.min() < 0 or v.max() >= n_classes):
        raise ExplainError(f"{name} must be in [0, {n_classes - 1}] for this model")
    return v.long()


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last leaf module whose output is a feature map ``[B, K, h, w]`` with ``h*w > 1``
    (the layer before global pooling in a CNN: the usual layer for CAM and dissection)."""
    found: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        if name and not list(m.children()):

            def hook(_m, _a, out, name=name):
                if (
                    isinstance(out, torch.Tensor)
                    and out.dim() == 4
                    and out.shape[2] * out.shape[3] > 1
                ):
                    found.append(name)

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ExplainError(
            "the model has no layer with a [B, K, h, w] output; pass the layer by name"
        )
    return found[-1]
