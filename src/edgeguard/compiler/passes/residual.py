"""Pass: a residual sum after a sparse conv, ``relu(conv(x) + r)`` or ``conv(x) + r``, is added by
the conv's kernel (``SparseConv.residual``): each task adds ``r`` to the outputs it has just
written, still in its cache, and applies the ReLU there, instead of two more passes over the
tensor and two more calls in the graph."""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..sparse_conv import SparseConv
from .graph import binary_calls, module_of, shared
from .relu_fusion import fuse_relu

_ADDS = {operator.add, torch.add}


def fuse_residuals(gm: fx.GraphModule) -> int:
    """Rewrite ``conv(x) + r`` (either order, a ReLU after it or not) into ``conv(x, r)`` where
    ``conv`` is a CPU :class:`SparseConv` called once, with no ReLU or pool of its own, whose
    output only that sum reads; returns how many.  ``r`` broadcasts as in the sum (the layer adds
    a broadcast residual with PyTorch)."""
    done = 0
    for node, pairs in binary_calls(gm, _ADDS):
        for mine, other in pairs:
            if not isinstance(mine, fx.Node) or not isinstance(other, fx.Node) or mine is other:
                continue
            conv = module_of(gm, mine)
            if not isinstance(conv, SparseConv) or conv.mode != "cpu":
                continue
            if conv.relu or conv.pool or conv.residual or shared(gm, mine):
                continue
            if len(mine.users) != 1 or len(mine.args) != 1 or mine.kwargs:
                continue
            conv.relu = fuse_relu(gm, node)  # the ReLU (if any) after the sum goes too
            with gm.graph.inserting_before(node):
                fused = gm.graph.call_module(mine.target, (mine.args[0], other))
            conv.residual = True
            node.replace_all_uses_with(fused)
            gm.graph.erase_node(node)
            gm.graph.erase_node(mine)
            done += 1
            break
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
