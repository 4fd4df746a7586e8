"""``edgeguard.compile``: turn a pruned model into one that is faster and computes the same function."""

from __future__ import annotations

import copy
import logging
import math
import threading
import warnings
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import ConfigError
from .errors import CompileError
from .plan import ConvGeometry, make_plan
from .pool import MaxPoolCpu
from .pool import supported as pool_supported
from .shrink import (
    CONVS,
    effective_weight,
    fold_batchnorm,
    fuse_relu,
    materialise_mask,
    module_of,
    remove_identities,
    set_module,
    shrink,
)
from .sparse_conv import SparseConv
from .sparse_linear import SparseLinear

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "cuda", "auto", "torch")


@dataclass
class LayerDecision:
    """What the compiler did with one layer.

    ``action`` is one of ``"sparse"`` (generated kernel), ``"dense"`` (kept as a dense op: nothing
    pruned, or too dense to pay off), ``"shrunk"`` (physically smaller dense op) or ``"unsupported"``.
    ``density`` is the fraction of the original weights that the compiled layer still multiplies.
    """

    name: str
    action: str
    density: float
    detail: str = ""


# A pruned Linear runs sparse on the CPU from this many weights up (16 MB): smaller dense layers
# read their weights from cache and the sparse call's fixed cost wins.  KGS at 3.6x, batch 1,
# 2 threads (Zen 5): 512 x 4096 (8 MB) 0.86x the speed of dense; 4096 x 4096 (64 MB) 2.4x faster;
# C3D's fc6, 4096 x 8192, 2.2x.
LINEAR_MIN_WEIGHTS = 1 << 22


class CompiledModel(nn.Module):
    """A compiled model: call it like the original (inference only, under ``torch.no_grad``).

    Inputs holding NaN or Inf are computed by the model given to :func:`compile_model` (in eval
    mode), so they propagate exactly as there: the sparse kernels skip pruned weights and would
    never compute ``0 * inf``.  Inputs that require gradients are refused (inference only)."""

    def __init__(self, graph_module: fx.GraphModule | nn.Module, backend: str,
                 decisions: list[LayerDecision], reference: nn.Module | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:  # fmt: skip
        nn.Module.__init__(self)
        self.module = graph_module
        self.backend = backend
        self.decisions = decisions
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        object.__setattr__(self, "_reference", reference)  # not a submodule: no copy, no .to()
        self._lock = threading.Lock()
        for m in graph_module.modules():
            if hasattr(m, "reuse_buffers"):
                m.reuse_buffers = True

    def forward(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise CompileError("a compiled model is inference-only: no gradients flow through its "
                               "kernels; attack or train the model given to edgeguard.compile")  # fmt: skip
        if self._reference is not None and any(
            t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors
        ):
            return self._reference_forward(args, kwargs)
        # Layers reuse their buffers between calls, so calls are serialised and tensor outputs are
        # copied out (a conv output returned as is would be overwritten by the next call).
        with self._lock, torch.no_grad():
            try:
                out = self.module(*args, **kwargs)
            except CompileError as err:
                shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
                compiled_for = f"compiled for input {self.input_shape}" if self.input_shape else (
                    "compiled")  # fmt: skip
                raise CompileError(f"input {shapes} does not fit this model ({compiled_for}): "
                                   f"{err}") from None  # fmt: skip
            return _copied(out)

    def _reference_forward(self, args, kwargs):
        model = self._reference
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        with self._lock, torch.no_grad():
            model.eval()
            try:
                move = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
                out = model(*move, **{k: v.to(dev) if isinstance(v, torch.Tensor) else v
                                      for k, v in kwargs.items()})  # fmt: skip
            finally:
                model.train(was_training)
        target = next(t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        return _copied(out, target)

    def sparse_layers(self) -> dict[str, SparseConv]:
        return {n: m for n, m in self.module.named_modules() if isinstance(m, SparseConv)}

    def summary(self) -> str:
        lines = [
            f"backend: {self.backend}",
            f"{'layer':32s} {'action':12s} {'density':>8s}  detail",
        ]
        for d in self.decisions:
            lines.append(f"{d.name:32s} {d.action:12s} {d.density:8.3f}  {d.detail}")
        return "\n".join(lines)


def _copied(out, device: torch.device | None = None):
    """``out`` with every tensor in it (tuples, lists, dicts included) copied, so no caller holds a
    buffer that the next call overwrites."""
    if isinstance(out, torch.Tensor):
        return out.to(device) if device is not None and out.device != device else out.clone()
    if isinstance(out, tuple | list):
        items = [_copied(v, device) for v in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    if isinstance(out, dict):
        return type(out)((k, _copied(v, device)) for k, v in out.items())
    return out


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cuda`` when a GPU and Triton are available, else ``cpu``; ``cpu`` without a
    working compiler -> ``torch`` with a warning."""
    if backend not in BACKENDS:
        raise CompileError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() and _has_triton() else "cpu"
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise CompileError("backend 'cuda' needs a CUDA GPU; none is available (use 'cpu')")
        if not _has_triton():
            raise CompileError("backend 'cuda' needs Triton (pip install triton)")
    if backend == "cpu":
        from .cpu import CompilerUnavailable, host_target

        try:
            host_target()
        except CompilerUnavailable as err:
            warnings.warn(
                f"{err}: the compiled model uses the pure-PyTorch fallback (correct, not faster)",
                stacklevel=3,
            )
            backend = "torch"
    return backend


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def compile_model(
    model: nn.Module,
    backend: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    *,
    max_density: float = 0.8,
    shrink_channels: bool = True,
    mr: int | None = None,
    nv: int | None = None,
    precision: str = "ieee",
) -> CompiledModel:
    """Compile a (masked) pruned model for inference.

    Args:
        model: an ``nn.Module`` whose pruned weights are zero or masked by ``weight_mask`` buffers
            (as left by :func:`edgeguard.sparsity.prune_model`); it is copied, never modified.
        backend: ``"cpu"`` (generated C++), ``"cuda"`` (Triton), ``"auto"`` or ``"torch"`` (standard
            operators only).
        input_shape: full input shape incl. batch, e.g. ``(1, 3, 16, 112, 112)``; when given, every
            kernel is generated and built now (in parallel) instead of on first use.
        max_density: a conv layer that would still multiply more than this fraction of its weights
            stays a dense (oneDNN/cuDNN) op, since a sparse kernel would not pay off; in (0, 1].
        shrink_channels: physically remove dead filters and the matching channels downstream.
        mr: filters per block (CPU default: 8 with AVX-512, else 4, the register tile; 16 on CUDA,
            one tensor-core tile, measured fastest on an H100).
        nv: vectors of output positions in the CPU register tile (default: per layer and input
            size with AVX-512, 2 or 3 (:meth:`~edgeguard.compile.cpu.Target.nv_for`), else 3).
        precision: CUDA matmul precision, ``"ieee"`` (float32, default) or ``"tf32"``.

    Returns:
        A :class:`CompiledModel` whose ``decisions`` say what happened to each layer.
    """
    if not isinstance(model, nn.Module):
        raise CompileError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0 < max_density <= 1:
        raise CompileError(f"max_density must be in (0, 1], got {max_density}")
    if precision not in ("ieee", "tf32"):
        raise CompileError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    backend = resolve_backend(backend)
    tile = (4, 3)
    if backend == "cpu":
        from .cpu import host_target

        tile = host_target().tile  # (8, 2) with AVX-512, else (4, 3): measured per CPU
    # Linear layers (batch-1 GEMVs, bound by reading their weights) use blocks of 8 outputs on the
    # CPU unless told otherwise: 8 x 1 tiles read C3D's fc6 at 3.6x in 0.61x the time of 4 x 3
    # (AVX2 Zen 3, 2 threads); with AVX-512, 8 is the default anyway.
    linear_mr = mr if mr is not None else max(8, tile[0])
    if mr is None:
        mr = 16 if backend == "cuda" else tile[0]  # 16: measured best on an H100
    if nv is not None and (not isinstance(nv, int) or nv < 1):
        raise CompileError(f"nv must be a positive integer or None, got {nv!r}")
    if not isinstance(mr, int) or mr < 1:
        raise CompileError(f"mr must be a positive integer, got {mr!r}")
    reference = model
    model = copy.deepcopy(model).eval().float()
    if input_shape is not None:
        from ..models.check import check_input_fits

        try:
            check_input_fits(model, tuple(input_shape), "input_shape")
        except ConfigError as err:
            raise CompileError(str(err)) from None
    decisions: list[LayerDecision] = []
    orig_density: dict[str, float] = {}
    orig_numel: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (*CONVS, nn.Linear)):
            w = effective_weight(m)
            orig_density[name] = float((w != 0).float().mean())
            orig_numel[name] = w.numel()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:
        warnings.warn(
            f"model is not traceable by torch.fx ({type(err).__name__}: {err}); compiling its conv "
            "layers in place, without BatchNorm folding, ReLU fusion or channel shrinking",
            stacklevel=2,
        )
        return _compile_in_place(
            model, backend, decisions, max_density, mr, nv, input_shape, reference
        )
    remove_identities(gm)
    fold_batchnorm(gm)
    shrunk = shrink(gm) if shrink_channels else {}
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if m is None:
            continue
        name = str(node.target)
        if isinstance(m, nn.Linear):
            materialise_mask(m)
            dens = orig_density.get(name, 1.0)
            now = float((m.weight != 0).float().mean())
            why = None
            if backend != "cpu":
                why = "linear layers run dense on this backend"
            elif now > max_density:
                why = f"too dense to pay off (density {now:.2f} > {max_density})"
            elif m.weight.numel() < LINEAR_MIN_WEIGHTS:
                why = f"too small to pay off ({m.weight.numel()} weights: dense reads them from cache)"
            if why is not None:
                why = "nothing pruned" if now > 0.999 else why
                decisions.append(LayerDecision(name, "dense", dens, why))
                continue
            # Batch-1 FC layers are bound by reading their weights: the sparse kernel reads only
            # the kept ones (C3D's fc6 + fc7 at 3.6x: 56 of 200 MB).
            relu = fuse_relu(gm, node)
            new = SparseLinear.from_linear(m, relu=relu, mode="cpu", mr=linear_mr, nv=nv, name=name)
            set_module(gm, name, new)
            blocks = len(new.conv.plan.block_rows)
            decisions.append(LayerDecision(name, "sparse", dens, f"{blocks} blocks of {linear_mr} outputs"
                                           + (", ReLU fused" if relu else "")))  # fmt: skip
            continue
        if backend == "cpu" and pool_supported(m):
            set_module(gm, name, MaxPoolCpu(m, name))
            continue
        if not isinstance(m, CONVS):
            if getattr(m, "weight_mask", None) is not None:
                decisions.append(LayerDecision(name, "unsupported", 1.0,
                                               f"{type(m).__name__} is left as it is"))  # fmt: skip
            continue
        decision, new = _compile_conv(name, m, backend, max_density, mr, nv, gm, node)
        # report against the original layer: a shrunk layer's density counts the removed filters
        decision.density *= m.weight.numel() / orig_numel.get(name, m.weight.numel())
        if name in shrunk:
            before, after = shrunk[name]
            if decision.action == "dense":
                decision.action, decision.detail = "shrunk", f"filters {before}->{after}, dense op"
            else:
                decision.detail = f"filters {before}->{after}; " + decision.detail
        decisions.append(decision)
        if new is not None:
            set_module(gm, name, new)
    gm.graph.lint()
    gm.recompile()
    for m in gm.modules():
        if isinstance(m, SparseConv):
            m.precision = precision
    compiled = CompiledModel(gm, backend, decisions, reference, input_shape)
    if backend == "cuda":
        compiled.to("cuda")
    if input_shape is not None and backend == "cpu":
        build_kernels(compiled, input_shape)
    return compiled


def _compile_conv(name, m, backend, max_density, mr, nv, gm=None, node=None):
    materialise_mask(m)
    if (
        m.groups != 1
        or isinstance(m, nn.Conv1d)
        or m.padding_mode != "zeros"
        or isinstance(m.padding, str)
    ):
        why = "grouped" if m.groups != 1 else "conv1d/padding mode"
        return LayerDecision(name, "unsupported", 1.0, f"{why}: left as a dense op"), None
    w = m.weight.detach().float()
    w5 = w if w.dim() == 5 else w.unsqueeze(2)
    plan = make_plan(w5, m.bias, ConvGeometry.of(m), mr)
    if plan.density > max_density or (backend == "torch" and plan.density > 0.999):
        detail = (
            "nothing pruned" if plan.density > 0.999 else
            f"too dense to pay off (density {plan.density:.2f} > {max_density}): dense kernel"
        )  # fmt: skip
        if plan.density <= 0.999:
            log.info("%s: %s", name, detail)
        return LayerDecision(name, "dense", plan.density, detail), None
    relu = fuse_relu(gm, node) if gm is not None and backend in ("cpu", "cuda") else False
    new = SparseConv(plan, relu=relu, two_d=w.dim() == 4, mode=backend, nv=nv, name=name)
    detail = f"{len(plan.block_rows)} blocks of {mr} filters" + (", ReLU fused" if relu else "")
    return LayerDecision(name, "sparse", plan.density, detail), new


def _compile_in_place(model, backend, decisions, max_density, mr, nv, input_shape, reference=None):
    for name, m in list(model.named_modules()):
        if isinstance(m, CONVS):
            decision, new = _compile_conv(name, m, backend, max_density, mr, nv)
            decisions.append(decision)
            if new is not None:
                set_module(model, name, new)
        elif isinstance(m, nn.Linear):
            materialise_mask(m)
    compiled = CompiledModel(model, backend, decisions, reference, input_shape)
    if input_shape is not None:
        build_kernels(compiled, input_shape)
    return compiled


# A max pool is fused into the conv before it where the conv's unpooled output has at least this
# many bytes: the output then never reaches memory.  C3D at 3.6x KGS, 2 threads (AVX2 Zen 3):
# conv1 + pool1 (51 MB) 0.47-0.52x the time, conv2 + pool2 (26 MB) 0.94x; conv3b + pool3 (6 MB,
# stays in L3) 1.06x and conv4b + pool4 1.01-1.03x, where whole pooling windows per task cost more
# than the separate pool: not fused.
FUSE_POOL_MIN_BYTES = 16 << 20


def fuse_pools(
    gm: fx.GraphModule, in_shapes: dict[nn.Module, tuple[int, ...]],
    decisions: list[LayerDecision] | None = None,
) -> list[str]:  # fmt: skip
    """Fuse each CPU max pool (stride = window, no padding) whose input is a sparse conv's only
    output into that conv, where the conv's output (for its input shape in ``in_shapes``, 5D) has
    at least :data:`FUSE_POOL_MIN_BYTES`; returns the names of the convs that took a pool."""
    fused = []
    for node in list(gm.graph.nodes):
        conv = module_of(gm, node)
        if not isinstance(conv, SparseConv) or conv.mode != "cpu" or conv.pool:
            continue
        if len(node.users) != 1 or conv not in in_shapes:
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


def build_kernels(compiled: CompiledModel, input_shape: tuple[int, ...]) -> None:
    """Generate and build every CPU kernel the model needs for ``input_shape`` in one parallel build
    (the model runs once with the standard-operator path to learn each layer's input size; large
    conv outputs then take their max pool into the conv, :func:`fuse_pools`)."""
    layers = [
        m
        for m in compiled.module.modules()
        if (isinstance(m, SparseConv) and m.mode == "cpu" and m.plan.block_rows)
        or isinstance(m, MaxPoolCpu)
    ]
    if not layers:
        return
    from .cpu import build_many, host_target

    target = host_target()
    shapes: dict[nn.Module, list[tuple[int, ...]]] = {}  # every input shape a layer sees (5D)

    def hook(mod, args):
        x = args[0].unsqueeze(2) if mod.two_d else args[0]
        if tuple(x.shape) not in shapes.setdefault(mod, []):
            shapes[mod].append(tuple(x.shape))

    # One pass with the standard-operator path learns every layer's input size.
    handles = [m.register_forward_pre_hook(hook) for m in layers]
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
    if isinstance(gm, fx.GraphModule):
        once = {m: v[0] for m, v in shapes.items() if len(v) == 1}  # one size: fusion is safe
        fuse_pools(gm, once, compiled.decisions)
        called = {module_of(gm, n) for n in gm.graph.nodes}
        layers = [m for m in layers if m in called or not isinstance(m, MaxPoolCpu)]
    seen: list[tuple[nn.Module, tuple, torch.Tensor | None]] = []
    sources: list[str] = []
    for mod in layers:
        for shape in shapes.get(mod, []):  # none: not reached by this input
            src, order = mod.source(torch.empty(shape, device="meta"), target.vector_floats, target)
            seen.append((mod, shape[1:], order))
            sources.append(src)
    libs = build_many(sources, target)
    for (mod, shape, order), lib in zip(seen, libs, strict=True):
        mod.load_kernel(shape, lib, order)
