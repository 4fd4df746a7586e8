"""Pass: a constant ``F.pad`` that only feeds a conv (zeros) or a max pool (-inf) becomes that
layer's own padding when it pads every spatial axis evenly.

Graphs converted from TensorFlow (TF.js, ONNX from TF) spell padding as an explicit Pad op before
a VALID conv; as a separate op it copies the whole activation once more, while the kernels read a
layer's own padding for free (NanoDet: 2.9 of 23 ms in such pads).  Uneven pads (TF's SAME with
the odd pixel after) stay, for the depthwise lowering to take in or for PyTorch."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import fx, nn

from .graph import module_of, shared

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def pad_args(node: fx.Node) -> tuple[fx.Node, list[int], str, float] | None:
    """(input, pads, mode, value) of an ``F.pad`` call, or None where they are not plain."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if not isinstance(pads, tuple | list) or not all(isinstance(p, int) for p in pads):
        return None
    if not isinstance(value, int | float | type(None)):
        return None
    return node.args[0], list(pads), mode, 0.0 if value is None else float(value)


def _per_axis(v: int | tuple[int, ...], nd: int) -> tuple[int, ...]:
    """A module's int-or-tuple size argument (padding, kernel, dilation) per spatial axis."""
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _even_spatial(pads: list[int], nd: int) -> tuple[int, ...] | None:
    """Per spatial axis (first axis first) the padding of ``pads`` (F.pad order: last axis
    first), when each of the ``nd`` spatial axes is padded evenly and nothing else is."""
    if len(pads) % 2 or min(pads, default=0) < 0:
        return None
    pairs = [(pads[i], pads[i + 1]) for i in range(0, len(pads), 2)]
    if any(p != (0, 0) for p in pairs[nd:]) or any(a != b for a, b in pairs[:nd]):
        return None
    per = [a for a, _ in pairs[:nd]] + [0] * (nd - min(nd, len(pairs)))
    return tuple(reversed(per))


def fold_pads(gm: fx.GraphModule) -> int:
    """Fold every such pad of ``gm`` into the layer after it; returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.pad or len(node.users) != 1:
            continue
        parsed = pad_args(node)
        (user,) = node.users
        m = module_of(gm, user)
        if parsed is None or m is None or shared(gm, user):
            continue
        x, pads, mode, value = parsed
        if mode != "constant" or user.args[:1] != (node,) or len(user.args) != 1 or user.kwargs:
            continue
        if isinstance(m, _CONVS):
            if value != 0.0 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                continue
            nd = len(m.kernel_size)
        elif isinstance(m, _POOLS):  # a max pool pads with -inf itself
            if value != -math.inf:
                continue
            nd = 1 + next(i for i, t in enumerate(_POOLS) if isinstance(m, t))
        else:
            continue
        add = _even_spatial(pads, nd)
        if add is None:
            continue
        new = tuple(o + a for o, a in zip(_per_axis(m.padding, nd), add, strict=True))
        if isinstance(m, _POOLS):  # PyTorch takes at most half the (dilated) window
            k, dil = _per_axis(m.kernel_size, nd), _per_axis(m.dilation, nd)
            if any(p > ((kk - 1) * d + 1) // 2 for p, kk, d in zip(new, k, dil, strict=True)):
                continue
        else:  # (what a conv's forward pads with for non-zero padding modes, kept in step)
            m._reversed_padding_repeated_twice = [p for p in reversed(new) for _ in range(2)]
        m.padding = new
        user.replace_input_with(node, x)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return folded
