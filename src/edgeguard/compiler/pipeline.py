"""``edgeguard.compile``: turn a pruned model into one that is faster and computes the same function.

The pipeline: trace with torch.fx, then the passes of :mod:`.passes` (identities, BatchNorm folding,
shrinking, lowering with ReLU fusion), then the backend's :meth:`~.backends.Backend.finish` (CPU:
build every kernel for ``input_shape``, fusing large max pools into their convs).
"""

from __future__ import annotations

import copy
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConfigError
from .backends import BACKENDS, get_backend, resolve_backend
from .build import build_kernels
from .errors import CompileError
from .model import CompiledModel, LayerDecision, input_shapes
from .passes import (
    CONVS,
    effective_weight,
    fold_batchnorm,
    fuse_hard_swish,
    remove_identities,
    shrink,
)
from .passes.graph import materialise_mask, set_module
from .passes.head_fusion import fuse_heads
from .passes.inplace import compute_into_kernel_outputs, residuals_into_outputs
from .passes.lowering import LINEAR_MIN_WEIGHTS, lower, lower_conv
from .passes.pad_fold import fold_pads
from .passes.pool_fusion import FUSE_POOL_MIN_BYTES, fuse_pools
from .passes.pw_dw_fusion import depthwise_out_widths, fuse_pointwise_depthwise
from .passes.residual import fuse_residuals
from .passes.sums import native_sums
from .passes.wide import wide_outputs
from .replay import kernel_module, one_run
from .sparse_conv import PRECISIONS, SparseConv

DEFAULT_MAX_DENSITY = 0.8  # compile_model's max_density where none is given

__all__ = [
    "BACKENDS",
    "FUSE_POOL_MIN_BYTES",
    "LINEAR_MIN_WEIGHTS",
    "CompiledModel",
    "LayerDecision",
    "build_kernels",
    "compile_model",
    "fuse_pools",
    "resolve_backend",
]


def compile_model(
    model: nn.Module,
    backend: str = "auto",
    input_shape: tuple[int, ...] | list[tuple[int, ...]] | None = None,
    *,
    max_density: float | None = None,
    shrink_channels: bool = True,
    mr: int | None = None,
    nv: int | None = None,
    precision: str = "ieee",
) -> CompiledModel:
    """Compile a (masked) pruned model for inference.

    Args:
        model: an ``nn.Module`` whose pruned weights are zero or masked by masks (:mod:`edgeguard.masks`)
            (as left by :func:`edgeguard.sparsity.prune_model`); it is copied, never modified.
        backend: ``"cpu"`` (generated C++), ``"cuda"`` (Triton), ``"auto"`` or ``"torch"`` (standard
            operators only).
        input_shape: full input shape incl. batch, e.g. ``(1, 3, 16, 112, 112)``, or a list of
            them; every kernel for each is generated and built now (in parallel).  A size met
            later is built on its first call, all its layers at once, with a log line.
        max_density: a conv layer that would still multiply more than this fraction of its weights
            stays a dense (oneDNN/cuDNN) op, since a sparse kernel would not pay off; in (0, 1].
            Default (None): 0.8, except that on the CPU backend such layers are lowered too
            where the whole forward then becomes one run of kernels, replayed as one native
            call (a layer left to PyTorch makes the forward run its Python between kernels).
        shrink_channels: physically remove dead filters and the matching channels downstream.
        mr: filters per block for every layer (CPU: 1, 2, 4, 8 or 16; CUDA: 16 is one tensor-core
            tile).  Default: per layer, the block size that stores the fewest weights, among the
            register tile (CPU: 8 with AVX-512, else 4) and half of it, the smaller counted 15 %
            dearer (a kernel group of 4 filters gets blocks of 4 rather than sharing 8); 16 on CUDA.
        nv: vectors of output positions in the CPU register tile (default: per layer and input
            size with AVX-512, 2 or 3 (:meth:`~edgeguard.compiler.cpu.Target.nv_for`), else 3).
        precision: CUDA matmul precision, ``"ieee"`` (float32, default), ``"tf32"`` or ``"bf16"``
            (operands rounded, float32 accumulation).

    Returns:
        A :class:`CompiledModel` whose ``decisions`` say what happened to each layer.
    """
    if not isinstance(model, nn.Module):
        raise CompileError(f"model must be an nn.Module, got {type(model).__name__}")
    auto_density = max_density is None
    max_density = DEFAULT_MAX_DENSITY if max_density is None else max_density
    if not isinstance(max_density, (int, float)) or not 0 < max_density <= 1:
        raise CompileError(f"max_density must be in (0, 1] or None, got {max_density!r}")
    if precision not in PRECISIONS:
        raise CompileError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    be = get_backend(resolve_backend(backend))
    # Linear layers (batch-1 GEMVs, bound by reading their weights) use blocks of at least 8
    # outputs unless told otherwise (docs/compiler.md, design decisions).
    linear_mr = mr if mr is not None else max(8, be.register_tile()[0])
    if nv is not None and (not isinstance(nv, int) or nv < 1):
        raise CompileError(f"nv must be a positive integer or None, got {nv!r}")
    if mr is None:  # per layer, the backend's block sizes (lower_conv picks)
        mrs = be.block_sizes()
    else:
        if not isinstance(mr, int) or isinstance(mr, bool) or mr < 1:
            raise CompileError(f"mr must be a positive integer, got {mr!r}")
        be.check_mr(mr)
        mrs = (mr,)
    reference = model
    model = copy.deepcopy(model).eval().float()
    if input_shape is not None:
        from ..models.check import check_input_fits

        for shape in input_shapes(input_shape):
            try:
                check_input_fits(model, shape, "input_shape")
            except ConfigError as err:
                raise CompileError(str(err)) from None
    orig_density: dict[str, float] = {}
    orig_numel: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (*CONVS, nn.Linear)):
            w = effective_weight(m)
            orig_density[name] = float((w != 0).float().mean())
            orig_numel[name] = w.numel()
    try:
        # a GraphModule (a loaded TF.js graph) is its own trace: re-tracing would trace into its
        # custom leaf modules, which fx cannot always follow
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception as err:
        warnings.warn(
            f"model is not traceable by torch.fx ({type(err).__name__}: {err}); compiling its conv "
            "layers in place, without BatchNorm folding, ReLU fusion or channel shrinking",
            stacklevel=2,
        )
        decisions = _lower_in_place(model, be, max_density, mrs, nv)
        compiled = CompiledModel(model, be.name, decisions, reference, input_shape)
        be.finish(compiled, input_shape)
        return compiled
    shapes = input_shapes(input_shape) if input_shape is not None else []
    passes = (be, mrs, linear_mr, nv, shrink_channels, orig_density, orig_numel, shapes)
    decisions = _run_passes(gm, max_density, *passes)
    dense_convs = {n for n, m in gm.named_modules() if isinstance(m, CONVS)}
    if auto_density and be.name == "cpu" and _only_dense_convs_apart(gm):
        # A conv left to PyTorch as too dense to pay off splits the forward, which then runs
        # its Python between the kernels (replay.py); lowered too, where the whole forward is
        # then one run of kernels, it replays as one native call (ResNet-18 filter-pruned 3x at
        # batch 1: 2.3x faster; docs/compiler.md, design decisions).
        alt = copy.deepcopy(reference).eval().float()
        alt = alt if isinstance(alt, fx.GraphModule) else fx.symbolic_trace(alt)
        alt_decisions = _run_passes(alt, 1.0, *passes)
        if one_run(alt) is not None:
            for d in alt_decisions:
                if d.name in dense_convs and d.action not in ("dense", "shrunk"):
                    d.detail += "; lowered though dense: the forward is then one run of kernels"
            gm, decisions = alt, alt_decisions
    for m in gm.modules():
        if isinstance(m, SparseConv):
            m.precision = precision
    compiled = CompiledModel(gm, be.name, decisions, reference, input_shape)
    be.finish(compiled, input_shape)
    return compiled


# what the lowered kernels take in after a conv: activations (capped ReLUs too) and sums
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh)
_JOINS = {torch.relu, F.relu, F.leaky_relu, F.relu6, F.hardtanh, operator.add, torch.add}


def _only_dense_convs_apart(gm: fx.GraphModule) -> bool:
    """Whether the lowered ``gm`` is not one run of kernels but what keeps it apart are only
    convs left dense, their activations and residual sums (which the kernels take in once the
    convs are lowered), so that lowering them may make the forward one native call."""
    if one_run(gm) is not None:
        return False
    found = False
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, CONVS):
                found = True
            elif not kernel_module(m) and not isinstance(m, _ACTIVATIONS):
                return False
        elif node.op == "call_method" or (node.op == "call_function" and node.target not in _JOINS):
            return False
    return found


def _run_passes(
    gm: fx.GraphModule,
    max_density: float,
    be,
    mrs: tuple[int, ...],
    linear_mr: int,
    nv: int | None,
    shrink_channels: bool,
    orig_density: dict[str, float],
    orig_numel: dict[str, int],
    shapes: list[tuple[int, ...]],
) -> list[LayerDecision]:
    """The passes on the traced ``gm`` (in place), lowering at ``max_density``; the decisions in
    the model's layer order.  ``shapes``: the declared input shapes (may be empty)."""
    remove_identities(gm)
    fold_pads(gm)
    fuse_hard_swish(gm)
    fold_batchnorm(gm)
    shrunk = shrink(gm) if shrink_channels else {}
    fused = []
    if be.native_depthwise:
        from .cpu import host_target

        widths = depthwise_out_widths(gm, shapes)
        fused = fuse_pointwise_depthwise(gm, orig_numel, widths, host_target().vector_floats)
    decisions = lower(gm, be, max_density, mrs, linear_mr, nv, shrunk, orig_density, orig_numel)
    if be.native_pools:  # the CPU backend's generated kernels
        fuse_heads(gm, decisions)
    rank = {n: i for i, n in enumerate(orig_density)}
    decisions = sorted([*decisions, *fused], key=lambda d: rank.get(d.name, len(rank)))
    if be.fuses_residual:
        fuse_residuals(gm)
    if be.name == "cpu":  # the sums left and shrinking's fields as kernels too
        native_sums(gm)
    compute_into_kernel_outputs(gm)
    residuals_into_outputs(gm)
    wide_outputs(gm)
    return decisions


def _lower_in_place(model, be, max_density, mr, nv) -> list[LayerDecision]:
    """Without a graph: each conv lowered where it is (no ReLU fusion), Linear masks applied."""
    decisions = []
    for name, m in list(model.named_modules()):
        if isinstance(m, CONVS):
            decision, new = lower_conv(name, m, be, max_density, mr, nv)
            decisions.append(decision)
            if new is not None:
                set_module(model, name, new)
        elif isinstance(m, nn.Linear):
            materialise_mask(m)
    return decisions
