"""Pass: fold every eval-mode BatchNorm that directly follows a conv into the conv."""

from __future__ import annotations

import torch
from torch import fx, nn

from .graph import BATCHNORMS, CONVS, materialise_mask, module_of, shared


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold every eval-mode BatchNorm that directly follows a conv into it (grouped and depthwise
    convs too: output channel ``o`` is still filter ``o`` alone); returns the folded names."""
    folded = []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if not isinstance(bn, BATCHNORMS) or bn.training or bn.running_mean is None:
            continue
        src = node.args[0]
        conv = module_of(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, CONVS) or len(src.users) != 1 or shared(gm, src):
            continue
        materialise_mask(conv)
        scale = (bn.weight.detach() if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias.detach() if bn.affine else 0.0
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        conv.weight.data = conv.weight.data * scale.view(-1, *[1] * (conv.weight.dim() - 1))
        conv.bias = nn.Parameter((b - bn.running_mean) * scale + shift)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    return folded
