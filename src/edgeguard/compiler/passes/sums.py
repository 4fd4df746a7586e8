"""Pass (CPU backend): the elementwise sums left in the graph become generated kernels.

After residual fusion, a sum no sparse conv took in (a residual whose conv adds another term
first, or whose producer is not a sparse conv) and shrinking's added-back fields
(:class:`.shrink.ConstantChannelField`) would be PyTorch ops between the kernels; as
:class:`~..eltwise.AddCpu` / :class:`~..eltwise.FieldAddCpu` modules (a ReLU after them fused)
the forward can still replay as one run of kernels.  Sums of anything but two tensors (a scalar,
keyword arguments) stay as they are; operands that broadcast run PyTorch's op at call time.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..eltwise import AddCpu, FieldAddCpu
from .graph import module_of, set_module, shared
from .relu_fusion import fuse_relu
from .shrink import ConstantChannelField

_ADDS = {operator.add, torch.add}


def native_sums(gm: fx.GraphModule) -> list[str]:
    """Replace the graph's tensor sums and constant fields by kernel modules; returns their
    names."""
    done = []
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if isinstance(m, ConstantChannelField) and len(node.args) == 2 and not shared(gm, node):
            name = str(node.target)
            relu = fuse_relu(gm, node)
            set_module(gm, name, FieldAddCpu(m, name, relu))
            node.args = (node.args[1], node.args[0])  # (conv output, conv input)
            done.append(name)
            continue
        inplace = node.op == "call_function" and node.target is operator.iadd
        if not (node.op == "call_function" and (node.target in _ADDS or inplace)):
            continue
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        if inplace and len(node.args[0].users) != 1:  # a += b read again later: left as it is
            continue
        name = f"sum_{len(done)}"
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, AddCpu(name))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, tuple(node.args))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.get_submodule(name).relu = fuse_relu(gm, new)
        done.append(name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
