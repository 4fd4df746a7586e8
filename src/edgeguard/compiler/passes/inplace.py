"""Pass: a sum or product whose operand is a kernel output read by nothing after it (a residual add
after a sparse conv; squeeze-excite's scaling of a depthwise output, whose mean was taken before)
is computed into that output: no new full-size tensor, and the result keeps the kernel output's
zero slack, so an unpadded sparse conv reading it takes it as its input buffer."""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..depthwise import DepthwiseConvCpu
from ..pointwise_depthwise import PointwiseDepthwiseCpu
from ..pool import MaxPoolCpu
from ..sparse_conv import SparseConv
from .graph import binary_calls, module_of, shared

KERNEL_MODULES = (SparseConv, DepthwiseConvCpu, MaxPoolCpu, PointwiseDepthwiseCpu)


def _fits(out: torch.Tensor, other) -> bool:
    return (
        isinstance(other, torch.Tensor)
        and not out.requires_grad
        and not other.requires_grad
        and torch.broadcast_shapes(out.shape, other.shape) == out.shape
        and torch.result_type(out, other) == out.dtype
    )


def add_into(out: torch.Tensor, other) -> torch.Tensor:
    """``out + other``, written into ``out`` when the sum has ``out``'s shape and dtype (addition
    commutes exactly, so the operand order does not change a bit)."""
    return out.add_(other) if _fits(out, other) else out + other


def mul_into(out: torch.Tensor, other) -> torch.Tensor:
    """``out * other``, written into ``out`` when the product has ``out``'s shape and dtype
    (multiplication commutes exactly)."""
    return out.mul_(other) if _fits(out, other) else out * other


_INTO = {operator.add: add_into, torch.add: add_into, operator.mul: mul_into, torch.mul: mul_into}


_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.nn.functional.adaptive_avg_pool2d}


def _fresh(u: fx.Node) -> bool:
    """Whether node ``u`` returns a new tensor, never a view of its input (reductions)."""
    if u.op == "call_function":
        return u.target in _REDUCTIONS
    return u.op == "call_method" and u.target in ("mean", "sum", "amax")


def compute_into_kernel_outputs(gm: fx.GraphModule) -> int:
    """Rewrite ``a + b`` / ``a * b`` into :func:`add_into` / :func:`mul_into` where ``a`` or ``b``
    is the output of a kernel module that no node after this one reads (and no graph output);
    returns how many."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    done = 0
    for node, pairs in binary_calls(gm, _INTO):
        for mine, other in pairs:
            if not isinstance(mine, fx.Node) or not isinstance(module_of(gm, mine), KERNEL_MODULES):
                continue
            others = [u for u in mine.users if u is not node]
            # the other readers come first and make new tensors (a view could be read later)
            if mine is other or not all(order[u] < order[node] and _fresh(u) for u in others):
                continue
            node.target, node.args = _INTO[node.target], (mine, other)
            done += 1
            break
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def residuals_into_outputs(gm: fx.GraphModule) -> int:
    """Mark (:attr:`SparseConv.residual_into`) each CPU sparse conv with a fused residual ``r``
    that may write its output over ``r``: ``r`` is another kernel module's output (a buffer of
    the compiled model, never the caller's tensor), not this conv's input, and every other
    reader of ``r`` comes before this conv and makes a new tensor (a conv, a reduction), so
    nothing reads ``r`` afterwards; the conv is called at one place.  Each output position then
    reads its residual and writes its result to the same place, where the residual's line is
    already in cache, instead of a separate output buffer.  Returns how many."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    done = 0
    for node in gm.graph.nodes:
        conv = module_of(gm, node)
        if not isinstance(conv, SparseConv) or not conv.residual or len(node.args) != 2:
            continue
        x, r = node.args
        if not isinstance(r, fx.Node) or r is x or shared(gm, node):
            continue
        if not isinstance(module_of(gm, r), KERNEL_MODULES):
            continue
        others = [u for u in r.users if u is not node]
        if all(
            order[u] < order[node] and (isinstance(module_of(gm, u), KERNEL_MODULES) or _fresh(u))
            for u in others
        ):
            conv.residual_into = True
            done += 1
    return done
