"""Pass: a ReLU that is a kernel's only user is applied by the kernel itself."""

from __future__ import annotations

import math

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


def capped_relu(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """The cap ``c`` where ``node`` is a ReLU capped at ``c > 0`` (``nn.ReLU6``, ``F.relu6``,
    ``nn.Hardtanh(0, c)``, ``F.hardtanh(x, 0, c)``, ``torch.clamp(x, 0, c)``, MobileNetV2's
    activation), else None."""
    m = module_of(gm, node)
    if isinstance(m, nn.ReLU6):
        return 6.0
    if isinstance(m, nn.Hardtanh):
        lo, hi = m.min_val, m.max_val
    elif node.op == "call_function" and node.target is F.relu6:
        if not set(node.kwargs) <= {"inplace"} or len(node.args) > 2:
            return None
        return 6.0
    elif node.op == "call_function" and node.target is F.hardtanh:
        if not set(node.kwargs) <= {"min_val", "max_val", "inplace"}:
            return None
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    elif (node.op == "call_function" and node.target in (torch.clamp, torch.clip)) or (
        node.op == "call_method" and node.target in ("clamp", "clip")
    ):
        if not set(node.kwargs) <= {"min", "max"}:
            return None
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    else:
        return None
    ok = isinstance(lo, int | float) and isinstance(hi, int | float) and lo == 0 and hi > 0
    return float(hi) if ok and not isinstance(hi, bool) else None


def relu_cap(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """``inf`` where ``node`` is a ReLU (:func:`is_relu`), ``c`` where a ReLU capped at ``c``
    (:func:`capped_relu`), else None."""
    return math.inf if is_relu(gm, node) else capped_relu(gm, node)


def fuse_relu_cap(gm: fx.GraphModule, node: fx.Node) -> tuple[bool, float]:
    """If ``node``'s only user is a ReLU, capped or not (:func:`relu_cap`), remove it (the
    caller's kernel applies it); returns ``(fused, cap)``, the cap ``inf`` for a plain ReLU or
    none."""
    u = _activation_user(gm, node)
    cap = relu_cap(gm, u) if u is not None else None
    if cap is None:
        return False, math.inf
    u.replace_all_uses_with(node)
    gm.graph.erase_node(u)
    return True, cap


def relu_note(relu: bool, cap: float) -> str:
    """What a decision says of a fused ReLU: ``"ReLU fused"``, ``"ReLU capped at c fused"`` or
    ``""`` (none)."""
    if not relu:
        return ""
    return "ReLU fused" if cap == math.inf else f"ReLU capped at {cap:g} fused"


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
