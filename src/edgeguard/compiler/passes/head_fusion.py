"""Pass: a classifier head (global average pool, flatten, dense ``nn.Linear``) becomes one
generated CPU kernel (``head.py``).

The pool and the flatten are recognised in the spellings classifiers use: ``AdaptiveAvgPool2d(1)``
(or ``F.adaptive_avg_pool2d(x, 1)``, 3-D alike), an average pool whose window is the whole plane
(``F.avg_pool2d(x, 4)`` on a 4 x 4 plane: checked on every call, another size runs PyTorch's
ops), or ``x.mean((2, 3))``; then ``torch.flatten(x, 1)``, ``nn.Flatten()``,
``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)`` or ``x.squeeze(-1).squeeze(-1)``.  Left
as PyTorch ops, any of them splits the forward (``replay.py``): CIFAR ResNet-18's usual head
(``F.avg_pool2d(out, 4)``, ``out.view(out.size(0), -1)``) made the whole forward run its Python.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..head import PooledLinearCpu
from ..model import LayerDecision
from .graph import module_of, set_module, shared

_ADAPTIVE = {nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_ADAPTIVE_FN = {F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_AVG = {nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_AVG_FN = {F.avg_pool2d: 2, F.avg_pool3d: 3}
# the dims a global mean reduces: per pool rank, as written with positive or negative indices
_MEAN_DIMS = {frozenset({2, 3}): 2, frozenset({-2, -1}): 2}
_MEAN_DIMS |= {frozenset({2, 3, 4}): 3, frozenset({-3, -2, -1}): 3}


@dataclass
class _Pool:
    """A global average over the spatial dims of ``source`` (``dims`` of them); ``window``: an
    average pool's window (global only where it is the whole plane), None for an adaptive pool
    or a mean; ``flat``: its output is already ``[N, C]``; ``nodes``: the graph nodes it is."""

    source: fx.Node
    dims: int
    window: tuple[int, ...] | None
    flat: bool
    nodes: list[fx.Node] = field(default_factory=list)
    what: str = ""


def _arg(node: fx.Node, i: int, name: str, default: object = None) -> object:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _ones(size: object, dims: int) -> bool:
    sizes = tuple(size) if isinstance(size, tuple | list) else (size,) * dims
    return len(sizes) == dims and all(s == 1 for s in sizes)


def _window(
    kernel: object, stride: object, padding: object, ceil: object, divisor: object, dims: int
) -> tuple[int, ...] | None:
    """An average pool's window where it is non-overlapping and unpadded (stride = window)."""

    def many(v: object) -> tuple[object, ...]:
        return tuple(v) if isinstance(v, tuple | list) else (v,) * dims

    k = many(kernel)
    if len(k) != dims or not all(isinstance(v, int) and v > 0 for v in k):
        return None
    if stride not in (None, [], ()) and many(stride) != k:
        return None
    if any(p != 0 for p in many(padding)) or ceil or divisor is not None:
        return None
    return tuple(int(v) for v in k)


def _pool(gm: fx.GraphModule, node: object) -> _Pool | None:
    """``node`` as a global average pool of its input, in any of the spellings above."""
    if not isinstance(node, fx.Node):
        return None
    m = module_of(gm, node)
    if m is not None:
        if len(node.args) != 1 or node.kwargs or shared(gm, node):
            return None
        if type(m) in _ADAPTIVE and _ones(m.output_size, _ADAPTIVE[type(m)]):
            return _Pool(node.args[0], _ADAPTIVE[type(m)], None, False, [node], str(node.target))
        if type(m) in _AVG:
            dims = _AVG[type(m)]
            win = _window(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.divisor_override, dims)
            if win is not None:
                return _Pool(node.args[0], dims, win, False, [node], str(node.target))
        return None
    if node.op == "call_function" and node.target in _ADAPTIVE_FN:
        dims = _ADAPTIVE_FN[node.target]
        if _ones(_arg(node, 1, "output_size"), dims):
            return _Pool(node.args[0], dims, None, False, [node], node.target.__name__)
        return None
    if node.op == "call_function" and node.target in _AVG_FN:
        dims = _AVG_FN[node.target]
        win = _window(
            _arg(node, 1, "kernel_size"),
            _arg(node, 2, "stride"),
            _arg(node, 3, "padding", 0),
            _arg(node, 4, "ceil_mode", False),
            _arg(node, 6, "divisor_override"),
            dims,
        )
        return _Pool(node.args[0], dims, win, False, [node], node.target.__name__) if win else None
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    if is_mean and node.args and set(node.kwargs) <= {"dim", "keepdim"}:
        dim = _arg(node, 1, "dim")
        dim = tuple(dim) if isinstance(dim, tuple | list) else (dim,)
        dims = _MEAN_DIMS.get(frozenset(dim)) if all(isinstance(d, int) for d in dim) else None
        if dims is None or len(dim) != dims:
            return None
        flat = not _arg(node, 2, "keepdim", False)
        return _Pool(node.args[0], dims, None, flat, [node], "mean")
    return None


def _batch_size(node: object) -> bool:
    """Whether ``node`` is ``t.size(0)`` or ``t.shape[0]`` of some tensor ``t``."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        return _arg(node, 1, "dim") == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1)
        )
    return False


def _unflattened(gm: fx.GraphModule, node: object, dims: int, features: int) -> fx.Node | None:
    """The input of ``node`` where ``node`` turns ``[N, C, 1, ...]`` (``dims`` unit dims) into
    ``[N, C]``: a flatten from dim 1, ``nn.Flatten()``, a view/reshape to ``(N, -1)`` or
    ``(-1, features)``, or squeezes of exactly the unit dims; else None."""
    if not isinstance(node, fx.Node) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    m = module_of(gm, node)
    if m is not None:
        ok = type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1 and len(node.args) == 1
        return src if ok and not shared(gm, node) else None
    is_flatten = (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten
    )
    if is_flatten:
        extra = set(node.kwargs) - {"start_dim", "end_dim"}
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        return src if start == 1 and end == -1 and not extra else None
    is_view = (node.op == "call_method" and node.target in ("view", "reshape")) or (
        node.op == "call_function" and node.target is torch.reshape
    )
    if is_view and not node.kwargs:
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        if len(shape) == 2 and (
            (_batch_size(shape[0]) and shape[1] == -1) or (shape[0] == -1 and shape[1] == features)
        ):
            return src
        return None
    # squeezes: each of a known dim, together exactly the unit dims 2 .. of a rank dims + 2 tensor
    rank, cur = dims + 2, node
    removed: list[int] = []
    while (cur.op == "call_method" and cur.target == "squeeze") or (
        cur.op == "call_function" and cur.target is torch.squeeze
    ):
        dim = _arg(cur, 1, "dim")
        if not isinstance(dim, int) or set(cur.kwargs) - {"dim"}:
            return None
        size = rank - len(removed)
        d = dim + size if dim < 0 else dim
        if not 2 <= d < size:
            return None
        removed.append(d)
        nxt = cur.args[0]
        if not isinstance(nxt, fx.Node):
            return None
        if len(removed) == dims:
            return nxt
        if len(nxt.users) != 1:
            return None
        cur = nxt
    return None


def _size_helper(node: fx.Node) -> bool:
    """``t.size(0)``, ``t.size()``, ``t.shape`` or an item of one of them: metadata reads."""
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return True
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and isinstance(node.args[0], fx.Node)
        and _size_helper(node.args[0])
    )


def _feeds_only(node: fx.Node, allowed: set[fx.Node]) -> bool:
    """Whether every use of ``node`` is in ``allowed`` or a size read that feeds only those."""
    return all(u in allowed or (_size_helper(u) and _feeds_only(u, allowed)) for u in node.users)


def _drop_unused(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """Erase ``nodes`` and the size reads that fed only them, once nothing uses them."""
    todo = set(nodes)
    for n in nodes:
        todo |= {u for u in n.users if _size_helper(u)}
        todo |= {a for a in n.all_input_nodes if _size_helper(a)}
    changed = True
    while changed:
        changed = False
        for node in list(todo):
            if not node.users:
                extra = {a for a in node.all_input_nodes if _size_helper(a)}
                gm.graph.erase_node(node)
                todo.discard(node)
                todo |= extra
                changed = True


def fuse_heads(gm: fx.GraphModule, decisions: list[LayerDecision] | None = None) -> list[str]:
    """Replace each ``linear(flatten(global_avg_pool(x)))`` (in the spellings of the module
    docstring) whose pool and flatten feed only the linear layer (a dense ``nn.Linear`` called
    once) by a :class:`PooledLinearCpu` under the linear layer's name; returns those names."""
    fused = []
    for node in list(gm.graph.nodes):
        lin = module_of(gm, node)
        if type(lin) is not nn.Linear or len(node.args) != 1 or node.kwargs or shared(gm, node):
            continue
        head = node.args[0]
        if not isinstance(head, fx.Node) or len(head.users) != 1:
            continue
        pool, chain = _pool(gm, head), [head]
        if pool is None or not pool.flat:  # [N, C, 1, ...]: a flatten first
            found = None
            for dims in (2, 3):
                src = _unflattened(gm, head, dims, lin.in_features)
                cand = _pool(gm, src) if src is not None else None
                if cand is not None and cand.dims == dims and not cand.flat:
                    found = cand
                    break
            if found is None:
                continue
            pool = found
            # the nodes between the flatten and the pool (a squeeze chain), each used once
            cur = head
            while cur is not pool.nodes[0]:
                nxt = cur.args[0]
                if nxt is not pool.nodes[0]:
                    chain.append(nxt)
                cur = nxt
        inner = {*chain, *pool.nodes, node}
        if not all(_feeds_only(n, inner) for n in (*chain, *pool.nodes)):
            continue
        name = str(node.target)
        set_module(gm, name, PooledLinearCpu(lin, name, pool.dims, pool.window))
        node.args = (pool.source,)
        _drop_unused(gm, [*chain, *pool.nodes])
        fused.append(name)
        what = pool.what if pool.flat else f"{pool.what} and flatten"
        for d in decisions or []:
            if d.name == name:
                d.detail += f"; {what} fused (generated head kernel)"
    if fused:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return fused
