"""Pass: a classifier head (global average pool, flatten, dense ``nn.Linear``) becomes one
generated CPU kernel (``head.py``)."""

from __future__ import annotations

import torch
from torch import fx, nn

from ..head import PooledLinearCpu
from ..model import LayerDecision
from .graph import module_of, set_module, shared


def _global_pool_dims(m: nn.Module | None) -> int | None:
    """2 or 3 for an adaptive average pool to one position (``AdaptiveAvgPool2d(1)`` ...), else
    None."""
    for cls, dims in ((nn.AdaptiveAvgPool2d, 2), (nn.AdaptiveAvgPool3d, 3)):
        if type(m) is cls:
            size = m.output_size
            sizes = tuple(size) if isinstance(size, tuple | list) else (size,) * dims
            return dims if all(s == 1 for s in sizes) else None
    return None


def _flatten_from_1(node: object) -> fx.Node | None:
    """The input of ``node`` when it is ``x.flatten(1)`` / ``torch.flatten(x, 1)`` (to the last
    dim), else None."""
    if not isinstance(node, fx.Node):
        return None
    is_method = node.op == "call_method" and node.target == "flatten"
    is_function = node.op == "call_function" and node.target is torch.flatten
    if not (is_method or is_function) or not node.args:
        return None
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    extra = set(node.kwargs) - {"start_dim", "end_dim"}
    return node.args[0] if start == 1 and end == -1 and not extra else None


def fuse_heads(gm: fx.GraphModule, decisions: list[LayerDecision] | None = None) -> list[str]:
    """Replace each ``linear(flatten(global_avg_pool(x), 1))`` whose pool and flatten feed only
    the linear layer (a dense ``nn.Linear`` called once) by a :class:`PooledLinearCpu` under the
    linear layer's name; returns those names."""
    fused = []
    for node in list(gm.graph.nodes):
        lin = module_of(gm, node)
        if type(lin) is not nn.Linear or len(node.args) != 1 or node.kwargs or shared(gm, node):
            continue
        flat = node.args[0]
        pool = _flatten_from_1(flat)
        if pool is None or len(flat.users) != 1 or pool.op != "call_module":
            continue
        dims = _global_pool_dims(module_of(gm, pool))
        if dims is None or len(pool.users) != 1 or len(pool.args) != 1 or pool.kwargs:
            continue
        name = str(node.target)
        set_module(gm, name, PooledLinearCpu(lin, name, dims))
        node.args = (pool.args[0],)
        gm.graph.erase_node(flat)
        gm.graph.erase_node(pool)
        fused.append(name)
        for d in decisions or []:
            if d.name == name:
                d.detail += f"; {pool.target} and flatten fused (generated head kernel)"
    if fused:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return fused
