"""Does an input fit a model?  One forward pass of zeros, with the framework's shape error turned
into a message that names the model, the input shape and what went wrong."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def describe(model: nn.Module) -> str:
    arch = getattr(model, "edgeguard_arch", None)
    return repr(arch["name"]) if isinstance(arch, dict) and "name" in arch else type(model).__name__


def input_error(
    model: nn.Module, shape: tuple[int, ...], err: Exception, what: str = "input"
) -> ConfigError:
    """The error for ``model`` failing on an input of ``shape``: one line, the framework's reason."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return ConfigError(
        f"{what} of shape {tuple(shape)} does not fit the model {describe(model)} ({first})"
    )


def check_input_fits(model: nn.Module, shape: tuple[int, ...], what: str = "input") -> torch.Tensor:
    """Run ``model`` (eval mode, no gradients, mode restored) on zeros of ``shape`` (batch included)
    and return its output; a shape the model cannot take raises :class:`ConfigError`."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(shape, device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError) as err:
        raise input_error(model, shape, err, what) from None
    finally:
        model.train(was_training)


def check_classes(model: nn.Module, shape: tuple[int, ...], num_classes: int, what: str) -> None:
    """The model's output must score at least ``num_classes`` classes for ``what``'s labels."""
    out = check_input_fits(model, shape, what)
    if out.dim() != 2 or out.shape[1] < num_classes:
        raise ConfigError(
            f"the model {describe(model)} outputs {tuple(out.shape[1:])} scores per "
            f"input but {what} has {num_classes} classes"
        )
