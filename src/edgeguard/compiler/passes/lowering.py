"""Pass: lower each pruned layer to the backend's kernel (or keep it dense, saying why)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...masks import mask_of
from ..backends import Backend
from ..depthwise import DepthwiseConvCpu, depthwise_supported
from ..model import LayerDecision
from ..plan import ConvGeometry, SparsePlan, make_plan, numeric_padding
from ..pool import MaxPoolCpu
from ..pool import supported as pool_supported
from ..sparse_conv import SparseConv
from ..sparse_linear import SparseLinear
from .graph import CONVS, materialise_mask, module_of, set_module, shared
from .pad_fold import pad_args
from .relu_fusion import fuse_leaky_relu, fuse_relu, fuse_relu_cap, relu_note

log = logging.getLogger(__name__)

# A pruned Linear runs sparse from this many weights up (16 MB): smaller dense layers read their
# weights from cache and the sparse call's fixed cost wins (docs/compiler.md, design decisions).
LINEAR_MIN_WEIGHTS = 1 << 22


def lower(
    gm: fx.GraphModule,
    backend: Backend,
    max_density: float,
    mr: int | tuple[int, ...],
    linear_mr: int,
    nv: int | None,
    shrunk: dict[str, tuple[int, int]],
    orig_density: dict[str, float],
    orig_numel: dict[str, int],
) -> list[LayerDecision]:
    """Replace the layers of ``gm`` by sparse kernels where they pay off; returns one decision per
    conv/linear layer.  ``shrunk``: filters before/after per shrunk conv; ``orig_*``: density and
    weight count of each layer before the passes (decisions report against the original)."""
    decisions: list[LayerDecision] = []
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if m is None:
            continue
        name = str(node.target)
        if isinstance(m, nn.Linear):
            density = orig_density.get(name, 1.0)
            decisions.append(
                lower_linear(gm, node, m, backend, max_density, linear_mr, nv, density)
            )
            continue
        if backend.native_pools and pool_supported(m):
            set_module(gm, name, MaxPoolCpu(m, name))
            continue
        if backend.native_depthwise and depthwise_supported(m) and not shared(gm, node):
            decisions.append(lower_depthwise(gm, node, m, name))
            continue
        if not isinstance(m, CONVS):
            if mask_of(m) is not None:
                decisions.append(
                    LayerDecision(name, "unsupported", 1.0, f"{type(m).__name__} is left as it is")
                )
            continue
        decision, new = lower_conv(name, m, backend, max_density, mr, nv, gm, node)
        # report against the original layer: a shrunk layer's density counts the removed filters
        decision.density *= m.weight.numel() / orig_numel.get(name, m.weight.numel())
        if name in shrunk:
            before, after = shrunk[name]
            if decision.action == "dense":
                decision.action, decision.detail = "shrunk", f"filters {before}->{after}, dense op"
            else:
                decision.detail = f"filters {before}->{after}; " + decision.detail
        decisions.append(decision)
        if new is not None:
            set_module(gm, name, new)
    gm.graph.lint()
    gm.recompile()
    return decisions


def lower_linear(
    gm: fx.GraphModule,
    node: fx.Node,
    m: nn.Linear,
    backend: Backend,
    max_density: float,
    mr: int,
    nv: int | None,
    density: float,
) -> LayerDecision:
    """A pruned Linear becomes a :class:`SparseLinear` where the backend has one and it pays off
    (batch-1 FC layers are bound by reading their weights: the kernel reads only the kept ones)."""
    name = str(node.target)
    materialise_mask(m)
    now = float((m.weight != 0).float().mean())
    why = None
    if not backend.sparse_linear:
        why = "linear layers run dense on this backend"
    elif now > max_density:
        why = f"too dense to pay off (density {now:.2f} > {max_density})"
    elif m.weight.numel() < LINEAR_MIN_WEIGHTS:
        why = f"too small to pay off ({m.weight.numel()} weights: dense reads them from cache)"
    if why is not None:
        return LayerDecision(name, "dense", density, "nothing pruned" if now > 0.999 else why)
    relu = fuse_relu(gm, node)
    new = SparseLinear.from_linear(m, relu=relu, mode=backend.name, mr=mr, nv=nv, name=name)
    set_module(gm, name, new)
    blocks = len(new.conv.plan.block_rows)
    detail = f"{blocks} blocks of {mr} outputs" + (", ReLU fused" if relu else "")
    return LayerDecision(name, "sparse", density, detail)


# A block smaller than the preferred register tile runs its stored weights this much slower
# (docs/compiler.md, design decisions: ResNet-18 KGS 4x8 with 4-filter blocks).
SMALLER_BLOCK_COST = 1.15


def _zero_pad_of(gm: fx.GraphModule, node: fx.Node) -> tuple[int, int, int, int] | None:
    """(left, right, top, bottom) of a constant-zero 2-D ``F.pad`` producing ``node``'s input and
    used by nothing else (TF's SAME padding with the odd pixel after); None when there is none."""
    src = node.args[0] if node.args else None
    if not isinstance(src, fx.Node) or src.op != "call_function" or src.target is not F.pad:
        return None
    parsed = pad_args(src)
    if parsed is None or len(src.users) != 1:
        return None
    _, pads, mode, value = parsed
    if mode != "constant" or value != 0.0 or len(pads) != 4 or min(pads) < 0:
        return None
    return tuple(pads)


def lower_depthwise(gm: fx.GraphModule, node: fx.Node, m: nn.Conv2d, name: str) -> LayerDecision:
    """Replace depthwise conv ``m`` (called at ``node``) by a generated kernel that also takes the
    zero ``F.pad`` before it and the ReLU after it."""
    materialise_mask(m)
    ph, pw = m.padding
    pads, notes = (pw, pw, ph, ph), ["generated depthwise kernel"]
    before = _zero_pad_of(gm, node)
    if before is not None:
        pad_node = node.args[0]
        pads = tuple(a + b for a, b in zip(pads, before, strict=True))
        node.replace_input_with(pad_node, pad_node.args[0])
        gm.graph.erase_node(pad_node)
        notes.append("zero padding taken in")
    relu, cap = fuse_relu_cap(gm, node)
    if relu:
        notes.append(relu_note(relu, cap))
    set_module(gm, name, DepthwiseConvCpu(m, name, pads, relu, cap))
    density = float((m.weight != 0).float().mean())
    return LayerDecision(name, "depthwise", density, ", ".join(notes))


def choose_plan(weight, bias, geometry: ConvGeometry, mr: int | tuple[int, ...]) -> SparsePlan:
    """The plan whose blocks store the fewest weights, among block sizes ``mr`` (preferred first;
    the others count ``SMALLER_BLOCK_COST`` times their stored weights), each cut by ``mr`` or at
    pattern boundaries (:func:`make_plan`)."""
    sizes = (mr,) if isinstance(mr, int) else tuple(mr)
    plans = [make_plan(weight, bias, geometry, r, by) for r in sizes for by in (False, True)]
    return min(plans, key=lambda p: p.density * (1.0 if p.mr == sizes[0] else SMALLER_BLOCK_COST))


class PaddedConv(nn.Module):
    """``F.pad(x, pads, mode)`` then a sparse conv without padding: a conv whose padding the
    kernels cannot read as zeros (``padding_mode`` reflect/replicate/circular, uneven "same")."""

    def __init__(self, conv: SparseConv, pads: tuple[int, ...], mode: str) -> None:
        super().__init__()
        self.conv, self.pads, self.mode = conv, pads, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pads, mode=self.mode))


def unpadded(m: nn.Module) -> nn.Module:
    """A copy of conv ``m`` with no padding (same weights and bias)."""
    new = type(m)(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        m.stride,
        0,
        m.dilation,
        bias=m.bias is not None,
    )
    new.weight = m.weight
    new.bias = m.bias
    return new


def lower_conv(
    name: str,
    m: nn.Module,
    backend: Backend,
    max_density: float,
    mr: int | tuple[int, ...],
    nv: int | None,
    gm: fx.GraphModule | None = None,
    node: fx.Node | None = None,
) -> tuple[LayerDecision, SparseConv | None]:
    """The decision for one conv and its :class:`SparseConv` (None: it stays as it is).  Without a
    graph (``gm`` None) no ReLU is fused.  ``mr``: filters per block, or the candidates, preferred
    first (:func:`choose_plan`)."""
    materialise_mask(m)
    if m.groups != 1 or isinstance(m, nn.Conv1d):
        why = "grouped" if m.groups != 1 else "conv1d"
        return LayerDecision(name, "unsupported", 1.0, f"{why}: left as a dense op"), None
    if m.padding_mode != "zeros" or numeric_padding(m) is None:
        # reflect/replicate/circular or uneven "same": the padding as its own op, then the
        # sparse conv without padding
        decision, inner = lower_conv(name, unpadded(m), backend, max_density, mr, nv, gm, node)
        if inner is None:
            return decision, None
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        decision.detail += f", {mode} padding as a separate op"
        return decision, PaddedConv(inner, tuple(m._reversed_padding_repeated_twice), mode)
    w = m.weight.detach().float()
    w5 = w if w.dim() == 5 else w.unsqueeze(2)
    plan = choose_plan(w5, m.bias, ConvGeometry.of(m), mr)
    if plan.density > max_density or (backend.keeps_unpruned_dense and plan.density > 0.999):
        detail = (
            "nothing pruned"
            if plan.density > 0.999
            else f"too dense to pay off (density {plan.density:.2f} > {max_density}): dense kernel"
        )
        if plan.density <= 0.999:
            log.info("%s: %s", name, detail)
        return LayerDecision(name, "dense", plan.density, detail), None
    relu, cap = False, math.inf
    if gm is not None and backend.fuses_relu:  # a ReLU, or one capped (ReLU6: MobileNetV2)
        relu, cap = fuse_relu_cap(gm, node)
    slope = 0.0
    if not relu and gm is not None and backend.name == "cpu":  # the CPU kernels take a leaky one
        leaky = fuse_leaky_relu(gm, node)
        relu, slope = leaky is not None, leaky or 0.0
    new = SparseConv(
        plan,
        relu=relu,
        slope=slope,
        cap=cap,
        two_d=w.dim() == 4,
        mode=backend.name,
        nv=nv,
        name=name,
    )
    fused = (
        f", leaky ReLU ({slope:g}) fused" if slope else ", " + relu_note(relu, cap) if relu else ""
    )
    detail = f"{len(plan.block_rows)} blocks of {plan.mr} filters" + fused
    return LayerDecision(name, "sparse", plan.density, detail), new
