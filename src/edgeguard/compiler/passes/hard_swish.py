"""Pass: hard-swish spelled out in elementwise ops, ``(c * x) * relu6(x + 3)`` as TF graphs of
MobileNetV3 hold it (``c`` about 1/6), becomes one ``F.hardswish`` and one in-place scale: two
passes over the tensor instead of four, and no three full-size temporaries."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx


def hard_swish_scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * x * relu6(x + 3)``, i.e. ``hardswish(x) * 6 * scale`` (``x`` any shape)."""
    return F.hardswish(x).mul_(6.0 * scale)


def _relu6_of_x_plus_3(node) -> fx.Node | None:
    """``x`` when ``node`` is ``relu6(x + 3)`` (the sum used by nothing else), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target is not F.relu6:
        return None
    if set(node.kwargs) - {"inplace"} or len(node.args) != 1 or node.kwargs.get("inplace"):
        return None
    add = node.args[0]
    if not isinstance(add, fx.Node) or add.target not in (operator.add, torch.add):
        return None
    if len(add.users) != 1 or add.kwargs or len(add.args) != 2:
        return None
    a, b = add.args
    if isinstance(b, fx.Node) and a == 3.0:
        a, b = b, a
    return a if isinstance(a, fx.Node) and b == 3.0 else None


def _scaled(node, x: fx.Node) -> float | None:
    """``c`` when ``node`` is ``c * x`` or ``x * c`` for a Python number ``c``, else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.kwargs:
        return None
    if node.target not in (operator.mul, torch.mul) or len(node.args) != 2:
        return None
    a, b = node.args
    if a is x and isinstance(b, int | float):
        return float(b)
    if b is x and isinstance(a, int | float):
        return float(a)
    return None


def fuse_hard_swish(gm: fx.GraphModule) -> int:
    """Replace every ``(c * x) * relu6(x + 3)`` (operands in either order, intermediates used by
    nothing else) by :func:`hard_swish_scaled`; returns how many."""
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.mul, torch.mul):
            continue
        if node.kwargs or len(node.args) != 2:
            continue
        for relu6, scaled in (node.args, node.args[::-1]):
            x = _relu6_of_x_plus_3(relu6)
            c = _scaled(scaled, x) if x is not None else None
            if c is None or len(relu6.users) != 1 or len(scaled.users) != 1:
                continue
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(hard_swish_scaled, (x, c))
            node.replace_all_uses_with(new)
            add = relu6.args[0]
            for dead in (node, relu6, add, scaled):
                gm.graph.erase_node(dead)
            fused += 1
            break
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused
