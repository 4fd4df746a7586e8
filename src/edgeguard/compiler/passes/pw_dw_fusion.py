"""Pass (CPU backend): a 1x1 conv that expands (at least as many outputs as inputs: its output,
not its input, is the tensor worth keeping out of memory) whose only consumer is a depthwise
conv, through an optional ReLU or scaled hard-swish and an optional zero ``F.pad`` (TF's SAME
padding), becomes one :class:`~..pointwise_depthwise.PointwiseDepthwiseCpu`, which also takes
the ReLU after the depthwise conv.  Runs before lowering, on BatchNorm-folded, shrunk graphs.

The fused kernel vectorises along the depthwise conv's output rows, so a pair is fused only
where those rows fill a vector for every declared input shape (:func:`depthwise_out_widths`):
on narrower planes (a CIFAR MobileNetV2's 8 x 8 and 4 x 4 stages) the fused kernel left most
lanes empty and ran slower than the two kernels apart (docs/compiler.md, design decisions)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import fx

from ..model import LayerDecision
from ..pointwise_depthwise import PointwiseDepthwiseCpu, fusable_depthwise, pointwise_supported
from .graph import materialise_mask, module_of, set_module, shared
from .hard_swish import hard_swish_scaled
from .lowering import _zero_pad_of
from .relu_fusion import fuse_relu_cap, relu_cap, relu_note


def _activation(gm: fx.GraphModule, node: fx.Node) -> tuple[str, float, float] | None:
    """``(act, scale, cap)`` when ``node`` is a ReLU (capped at ``cap``: a ReLU6; else inf) or a
    scaled hard-swish of its first argument."""
    cap = relu_cap(gm, node)
    if cap is not None:
        return "relu", 1.0, cap
    if node.op != "call_function":
        return None
    if node.target is hard_swish_scaled and len(node.args) == 2 and not node.kwargs:
        scale = node.args[1]
        return ("hard_swish", float(scale), math.inf) if isinstance(scale, int | float) else None
    return None


def depthwise_out_widths(
    gm: fx.GraphModule, shapes: list[tuple[int, ...]]
) -> dict[str, int] | None:
    """The narrowest output width (columns of the output plane) of each depthwise conv of ``gm``
    over the input ``shapes`` (one forward of a sample of each), or None where no shape is
    declared or the graph does not run on zeros of them (the widths then stay unknown)."""
    dws = {n: m for n, m in gm.named_modules() if fusable_depthwise(m)}
    if not shapes or not dws:
        return None
    widths: dict[str, int] = {}

    def hook(name: str):
        def record(_mod, _inp, out) -> None:
            widths[name] = min(widths.get(name, out.shape[-1]), out.shape[-1])

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in dws.items()]
    try:
        with torch.no_grad():
            for shape in shapes:
                gm(torch.zeros((1, *shape[1:])))
    except Exception:  # a graph that needs other inputs: fuse as without shapes
        return None
    finally:
        for h in handles:
            h.remove()
    return widths


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def fuse_pointwise_depthwise(
    gm: fx.GraphModule,
    orig_numel: Mapping[str, int] | None = None,
    out_widths: Mapping[str, int] | None = None,
    min_width: int = 1,
) -> list[LayerDecision]:
    """Fuse every ``depthwise(pad?(act?(conv1x1(x))))`` chain of ``gm`` whose intermediate
    results have no other user and whose modules are called once; returns two decisions per
    fused pair (the 1x1 conv: ``"sparse"`` when pruned, else ``"dense"``; the depthwise conv:
    ``"depthwise"``), each saying what it was fused with.  ``orig_numel``: each layer's weight
    count before shrinking (densities are reported against the original layer).
    ``out_widths`` (:func:`depthwise_out_widths`; None: unknown, every chain fused): a chain
    whose depthwise output is narrower than ``min_width`` columns (the target's vector) stays
    apart."""
    orig_numel = orig_numel or {}
    decisions: list[LayerDecision] = []
    for node in list(gm.graph.nodes):
        pw = module_of(gm, node)
        if pw is None or not pointwise_supported(pw) or shared(gm, node):
            continue
        if pw.out_channels < pw.in_channels:  # a reduction: its output is smaller than its input
            continue
        chain, act, scale, pw_cap = [], "none", 1.0, math.inf
        nxt = _only_user(node)
        if nxt is not None and nxt.args[:1] == (node,):
            found = _activation(gm, nxt)
            if found is not None:
                act, scale, pw_cap = found
                chain.append(nxt)
                nxt = _only_user(nxt)
        if nxt is None:
            continue
        dw = module_of(gm, nxt)
        pads = (0, 0, 0, 0)
        if dw is None and nxt.op == "call_function" and nxt.target is F.pad:
            user = _only_user(nxt)
            found_pads = _zero_pad_of(gm, user) if user is not None else None
            if nxt.args[:1] != ((chain or [node])[-1],) or found_pads is None:
                continue
            pads = found_pads
            chain.append(nxt)
            nxt, dw = user, module_of(gm, user)
        if dw is None or not fusable_depthwise(dw) or shared(gm, nxt):
            continue
        if dw.in_channels != pw.out_channels or nxt.args[:1] != ((chain or [node])[-1],):
            continue
        if out_widths is not None and out_widths.get(str(nxt.target), min_width) < min_width:
            continue
        materialise_mask(pw)
        materialise_mask(dw)
        pw_name, dw_name = str(node.target), str(nxt.target)
        relu, cap = fuse_relu_cap(gm, nxt)
        fused = PointwiseDepthwiseCpu(pw, dw, dw_name, act, scale, pads, relu, pw_cap, cap)
        fused.fused_from = (pw_name, dw_name)
        set_module(gm, dw_name, fused)
        nxt.args = (node.args[0], *nxt.args[1:])
        for dead in [*reversed(chain), node]:
            gm.graph.erase_node(dead)
        gm.delete_submodule(pw_name)
        numel = fused.pw_weight.numel()
        density = fused.density * numel / orig_numel.get(pw_name, numel)
        what = (
            f"ReLU capped at {pw_cap:g}, "
            if act == "relu" and pw_cap < math.inf
            else "ReLU, "
            if act == "relu"
            else "hard-swish, "
            if act != "none"
            else ""
        )
        decisions.append(
            LayerDecision(
                pw_name,
                "sparse" if density < 0.999 else "dense",
                density,
                f"fused with depthwise {dw_name} ({what}expanded tensor kept in cache)",
            )
        )
        decisions.append(
            LayerDecision(
                dw_name,
                "depthwise",
                float((dw.weight != 0).float().mean()),
                f"fused with the 1x1 conv {pw_name} before it"
                + (", zero padding taken in" if any(pads) else "")
                + (", " + relu_note(relu, cap) if relu else ""),
            )
        )
    gm.graph.lint()
    gm.recompile()
    return decisions
