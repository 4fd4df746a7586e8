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


def fuse_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """If ``node``'s only user is a ReLU, remove that ReLU (the caller's kernel applies it)."""
    if len(node.users) != 1 or shared(gm, node):  # a shared module's other calls have no ReLU
        return False
    (u,) = node.users
    if not is_relu(gm, u) or u.args[:1] != (node,):
        return False
    u.replace_all_uses_with(node)
    gm.graph.erase_node(u)
    return True
