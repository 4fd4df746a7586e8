"""Pass: a sum whose operand is a kernel output read by nothing else (a residual add after a
sparse conv) is computed into that output: no new full-size tensor, and the sum keeps the kernel
output's zero slack, so an unpadded sparse conv reading it takes it as its input buffer."""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..depthwise import DepthwiseConvCpu
from ..pool import MaxPoolCpu
from ..sparse_conv import SparseConv
from .graph import module_of

KERNEL_MODULES = (SparseConv, DepthwiseConvCpu, MaxPoolCpu)


def add_into(out: torch.Tensor, other) -> torch.Tensor:
    """``out + other``, written into ``out`` when the sum has ``out``'s shape and dtype (addition
    commutes exactly, so the operand order does not change a bit)."""
    if (
        isinstance(other, torch.Tensor)
        and not out.requires_grad
        and not other.requires_grad
        and torch.broadcast_shapes(out.shape, other.shape) == out.shape
        and torch.result_type(out, other) == out.dtype
    ):
        return out.add_(other)
    return out + other


def inplace_adds(gm: fx.GraphModule) -> int:
    """Rewrite ``a + b`` into :func:`add_into` where ``a`` or ``b`` is the output of a kernel
    module used by this sum alone (and not a graph output); returns how many."""
    outputs = {n for n in gm.graph.nodes if n.op == "output"}
    done = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, torch.add):
            continue
        if node.kwargs or len(node.args) != 2:
            continue
        for mine, other in (node.args, node.args[::-1]):
            if not isinstance(mine, fx.Node) or not isinstance(module_of(gm, mine), KERNEL_MODULES):
                continue
            if set(mine.users) != {node} or mine.users.keys() & outputs:
                continue
            node.target, node.args = add_into, (mine, other)
            done += 1
            break
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
