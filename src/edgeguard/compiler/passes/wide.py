"""Pass: a sparse conv whose every user is a 3-D CPU sparse conv stores its output wide (rows in
its padded buffer's pitch, whole aligned vectors, see
:func:`edgeguard.compiler.cpu.codegen.wide_plane`) and returns a view of it: a user that reads
its input in place reads the view where it lies, one that fills a padded buffer reads it through
its strides, one that adds it as a residual reads it in its own wide output's layout.  Where
a user pads its input (a 1 x 3 x 3 conv after a temporal one), the output is written straight
into that user's padded buffer, which then needs no fill (:meth:`SparseConv.output_layout`)."""

from __future__ import annotations

from torch import fx

from ..sparse_conv import SparseConv
from .graph import module_of, shared


def wide_outputs(gm: fx.GraphModule) -> list[str]:
    """Mark (:attr:`SparseConv.wide_out`) each CPU sparse conv (3-D, no fused pool, called at one
    place) whose output is read only by 3-D CPU sparse convs, as their input or their fused
    residual; returns the names marked.  Whether a layer then stores a
    wide output depends on its input size (the kernel's tiles, :meth:`SparseConv.wide_plane`)."""
    marked = []
    for node in gm.graph.nodes:
        conv = module_of(gm, node)
        if not isinstance(conv, SparseConv) or conv.mode != "cpu" or conv.two_d:
            continue
        if conv.pool or shared(gm, node) or not node.users:
            continue
        ok = True
        for user in node.users:
            reader = module_of(gm, user)
            ok = ok and (
                isinstance(reader, SparseConv)
                and reader.mode == "cpu"
                and not reader.two_d
                and not user.kwargs
                and list(user.args).count(node) == 1
                and (user.args[0] is node or (reader.residual and user.args[1:2] == (node,)))
            )
        if ok:
            conv.wide_out = True
            marked.append(str(node.target))
            # the first user that can take its input in its own padded buffer gets it written
            # there (where the sizes let it: SparseConv.output_layout)
            for user in node.users:
                reader = module_of(gm, user)
                if user.args[0] is node and reader.takes_prepadded() and not shared(gm, user):
                    conv.pad_reader = (reader,)
                    break
    return marked
