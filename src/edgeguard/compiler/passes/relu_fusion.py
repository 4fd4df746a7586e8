"""Pass: a ReLU that is a kernel's only user is applied by the kernel itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .graph import module_of, shared

RELU_FUNCS = {torch.relu, F.relu}


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a ReLU: an ``nn.ReLU`` module or ``torch.relu``/``F.relu`` (F.relu
    traced through torch.fx records inplace=False; an in-place ReLU counts all the same)."""
    return isinstance(module_of(gm, node), nn.ReLU) or (
        node.op == "call_function"
        and node.target in RELU_FUNCS
        and len(node.args) <= 2
        and set(node.kwargs) <= {"inplace"}
    )


def _activation_user(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """``node``'s only user when it takes ``node`` as its first argument and ``node``'s module
    is called nowhere else (a shared module's other calls have no such activation)."""
    if len(node.users) != 1 or shared(gm, node):
        return None
    (u,) = node.users
    return u if u.args[:1] == (node,) else None


def fuse_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """If ``node``'s only user is a ReLU, remove that ReLU (the caller's kernel applies it)."""
    u = _activation_user(gm, node)
    if u is None or not is_relu(gm, u):
        return False
    u.replace_all_uses_with(node)
    gm.graph.erase_node(u)
    return True


def fuse_leaky_relu(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """If ``node``'s only user is a leaky ReLU (``F.leaky_relu`` or ``nn.LeakyReLU``), remove it
    and return its negative slope (the caller's kernel applies it); None otherwise."""
    u = _activation_user(gm, node)
    if u is None:
        return None
    m = module_of(gm, u)
    if isinstance(m, nn.LeakyReLU):
        slope = m.negative_slope
    elif u.op == "call_function" and u.target is F.leaky_relu:
        if not set(u.kwargs) <= {"negative_slope", "inplace"}:
            return None
        slope = u.args[1] if len(u.args) > 1 else u.kwargs.get("negative_slope", 0.01)
    else:
        return None
    if not isinstance(slope, int | float):
        return None
    u.replace_all_uses_with(node)
    gm.graph.erase_node(u)
    return float(slope)
