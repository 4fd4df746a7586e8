"""Building every CPU kernel of a compiled model for one input shape, in one parallel build."""

from __future__ import annotations

import torch
from torch import fx, nn

from .depthwise import DepthwiseConvCpu
from .eltwise import AddCpu, FieldAddCpu
from .generated import kernel_output
from .head import PooledLinearCpu
from .model import CompiledModel
from .passes.graph import module_of
from .passes.pool_fusion import fuse_pools
from .pointwise_depthwise import PointwiseDepthwiseCpu
from .pool import MaxPoolCpu
from .sparse_conv import SparseConv, wide_strides


def build_kernels(compiled: CompiledModel, input_shape: tuple[int, ...], fuse: bool = True) -> int:
    """Generate and build every CPU kernel the model needs for ``input_shape`` in one parallel build
    (the model runs once with the standard-operator path to learn each layer's input size; large
    conv outputs then take their max pool into the conv, :func:`fuse_pools`, unless ``fuse`` is
    False: a model already built for another shape keeps its graph).  Returns the number of kernels
    it needed (built now or found in the cache)."""
    layers = [
        m
        for m in compiled.module.modules()
        if (isinstance(m, SparseConv) and m.mode == "cpu" and m.plan.block_rows)
        or isinstance(
            m,
            MaxPoolCpu
            | DepthwiseConvCpu
            | PointwiseDepthwiseCpu
            | PooledLinearCpu
            | AddCpu
            | FieldAddCpu,
        )
    ]
    if not layers:
        return 0
    from .cpu import build_many, host_target

    target = host_target()
    # every input shape a layer sees (5D), with its pitch where it is a wide output's view
    shapes: dict[nn.Module, list[tuple[tuple[int, ...], tuple[int, int] | None]]] = {}

    def hook(mod, args):
        if isinstance(mod, PooledLinearCpu) and not mod.runs_kernel(tuple(args[0].shape)):
            return  # its window is not this input's plane: PyTorch's ops, no kernel
        x = args[0].unsqueeze(2) if mod.two_d else args[0]
        if isinstance(mod, SparseConv):
            form = mod.call_key(x, args[1] if len(args) > 1 else None)[x.dim() :]
        else:
            form = (None, False, None)
        seen = (tuple(x.shape), *form)
        if seen not in shapes.setdefault(mod, []):
            shapes[mod].append(seen)

    def widen(mod, args, out):  # the wide view a kernel will return, so that readers see it
        view = mod._kernel_view(tuple(args[0].shape), *mod.input_form(args[0]))
        ops, head = mod.output_layout(view, target)
        if not ops:
            return None
        n, m, do, _, _ = out.shape
        wq = mod.kernel_layout(view, target.vector_floats).phased[2]
        wide = kernel_output((n * m * do * ops + head,)).as_strided(
            out.shape, wide_strides(out.shape, (wq, ops)), head
        )
        if head:  # written into its reader's padded buffer (the reader's key says so)
            wide._eg_padded_for = mod.pad_reader[0]
        return wide.copy_(out)

    # One pass with the standard-operator path learns every layer's input size.
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    handles += [
        m.register_forward_hook(widen)
        for m in layers
        if isinstance(m, SparseConv) and m.wide_out and not m.two_d
    ]
    modes = {m: m.mode for m in layers}
    for m in layers:
        m.mode = "torch"
    try:
        compiled(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.mode = mode
    gm = compiled.module
    if isinstance(gm, fx.GraphModule) and fuse:
        once = {m: v[0][0] for m, v in shapes.items() if len(v) == 1}  # one size: fusion is safe
        fuse_pools(gm, once, compiled.decisions)
        called = {module_of(gm, n) for n in gm.graph.nodes}
        layers = [m for m in layers if m in called or not isinstance(m, MaxPoolCpu)]
    seen: list[tuple[nn.Module, tuple, torch.Tensor | None]] = []
    sources: list[str] = []
    for mod in layers:
        for shape, pitch, prepadded, rpitch in shapes.get(mod, []):  # none: not reached
            meta = torch.empty(shape, device="meta")
            if pitch is not None:
                meta = torch.empty_strided(shape, wide_strides(shape, pitch), device="meta")
            if prepadded:
                meta._eg_padded_for = mod
            if isinstance(mod, SparseConv):
                src, order = mod.source(meta, target.vector_floats, target, rpitch)
                key = mod.kernel_key(shape, pitch, prepadded, rpitch)
            else:
                src, order = mod.source(meta, target.vector_floats, target)
                key = mod.kernel_key(shape)
            seen.append((mod, key, order))
            sources.append(src)
    libs = build_many(sources, target)
    for (mod, shape, order), lib in zip(seen, libs, strict=True):
        mod.load_kernel(shape, lib, order)
    return len(sources)
