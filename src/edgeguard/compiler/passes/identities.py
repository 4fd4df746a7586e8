"""Pass: drop ``nn.Identity`` and eval-mode dropout nodes."""

from __future__ import annotations

from torch import fx, nn

from .graph import module_of


def remove_identities(gm: fx.GraphModule) -> int:
    """Drop ``nn.Identity`` and eval-mode dropout nodes (they would hide conv -> ReLU pairs)."""
    removed = 0
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        drop = isinstance(m, nn.Identity) or (
            isinstance(m, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d)
            and not m.training
        )
        if drop and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    gm.graph.lint()
    gm.recompile()
    return removed
