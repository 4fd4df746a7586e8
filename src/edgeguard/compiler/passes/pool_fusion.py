"""Pass: a CPU max pool after a sparse conv is computed by the conv's kernel, so the conv's large
unpooled output never reaches memory."""

from __future__ import annotations

import math

from torch import fx, nn

from ..model import LayerDecision
from ..pool import MaxPoolCpu
from ..sparse_conv import SparseConv
from .graph import module_of, shared

# Fuse only where the conv's unpooled output is at least this large (past the L3): below it the
# separate pool is as fast (docs/compiler.md, design decisions).
FUSE_POOL_MIN_BYTES = 16 << 20


def fuse_pools(
    gm: fx.GraphModule,
    in_shapes: dict[nn.Module, tuple[int, ...]],
    decisions: list[LayerDecision] | None = None,
) -> list[str]:
    """Fuse each CPU max pool (stride = window, no padding) whose input is a sparse conv's only
    output into that conv, where the conv's output (for its input shape in ``in_shapes``, 5D) has
    at least :data:`FUSE_POOL_MIN_BYTES`; returns the names of the convs that took a pool."""
    fused = []
    for node in list(gm.graph.nodes):
        conv = module_of(gm, node)
        if not isinstance(conv, SparseConv) or conv.mode != "cpu" or conv.pool or conv.residual:
            continue
        if len(node.users) != 1 or conv not in in_shapes or shared(gm, node):
            continue
        (user,) = node.users
        pool = module_of(gm, user)
        if not isinstance(pool, MaxPoolCpu) or user.args != (node,) or user.kwargs:
            continue
        if pool.stride != pool.kernel or any(pool.padding) or pool.two_d != conv.two_d:
            continue
        shape = in_shapes[conv]
        out = conv.plan.geometry.output_size(tuple(shape[2:]))
        if any(k > n for k, n in zip(pool.kernel, out, strict=True)):
            continue
        if shape[0] * conv.plan.geometry.out_channels * math.prod(out) * 4 < FUSE_POOL_MIN_BYTES:
            continue
        conv.pool = tuple(pool.kernel)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        fused.append(str(node.target))
        for d in decisions or []:
            if d.name == str(node.target):
                d.detail += f", max pool {user.target} fused"
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused
