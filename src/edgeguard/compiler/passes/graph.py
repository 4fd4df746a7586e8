"""What every pass shares: the layer types it works on, fx node <-> module lookups, and weights with
their pruning masks applied."""

from __future__ import annotations

from collections.abc import Iterator

from torch import fx, nn

from ...masks import drop_mask, mask_of
from ...masks import masked_weight as effective_weight
from ...models.surgery import set_module

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

__all__ = [
    "BATCHNORMS",
    "CONVS",
    "binary_calls",
    "effective_weight",
    "materialise_mask",
    "module_of",
    "set_module",
    "shared",
]


def binary_calls(gm: fx.GraphModule, targets) -> Iterator[tuple[fx.Node, list[tuple]]]:
    """Each call of a function in ``targets`` with two positional arguments and no keywords (a sum
    or product), with its operands in both orders: ``(node, [(a, b), (b, a)])``; the graph may be
    changed between items."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        if node.kwargs or len(node.args) != 2:
            continue
        yield node, [tuple(node.args), tuple(node.args[::-1])]


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def shared(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s module is called at more than one place in the graph (a module used
    twice, e.g. siamese branches): passes that rewrite one call must leave such modules alone."""
    if node.op != "call_module":
        return False
    return len(gm.graph.find_nodes(op="call_module", target=node.target)) > 1


def materialise_mask(m: nn.Module) -> None:
    """Multiply the mask into the weight and drop the mask (the plan reads the zeros)."""
    if mask_of(m) is not None:
        m.weight.data = effective_weight(m)
        drop_mask(m)
