"""What the compiler returns: the compiled model and its per-layer decisions."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

from .calls import compiled_call, exporting
from .errors import CompileError
from .generated import BufferPool
from .sparse_conv import SparseConv

log = logging.getLogger(__name__)


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


class CompiledModel(nn.Module):
    """A compiled model: call it like the original (inference only, under ``torch.no_grad``).

    Inputs holding NaN or Inf are computed by the model given to :func:`compile_model` (in eval
    mode), so they propagate exactly as there: the sparse kernels skip pruned weights and would
    never compute ``0 * inf``.  Inputs that require gradients are refused (inference only).

    On the CPU backend the second call of an input shape records the kernels' calls and later
    calls of that shape replay them without the layers' Python (``replay.py``); the results are
    the same, bit for bit."""

    def __init__(
        self,
        graph_module: fx.GraphModule | nn.Module,
        backend: str,
        decisions: list[LayerDecision],
        reference: nn.Module | None = None,
        input_shape: tuple[int, ...] | list[tuple[int, ...]] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.module = graph_module
        self.backend = backend
        self.decisions = decisions
        self.input_shapes = input_shapes(input_shape)
        self.input_shape = self.input_shapes[0] if self.input_shapes else None
        self._built: set[tuple[int, ...]] = set()
        object.__setattr__(self, "_reference", reference)  # not a submodule: no copy, no .to()
        self._lock = threading.Lock()
        # shared buffers where this PyTorch can tell when a buffer is free (else one per layer)
        scratch = BufferPool() if BufferPool.available() else None
        for m in graph_module.modules():
            if hasattr(m, "reuse_buffers"):
                m.reuse_buffers = True
            if hasattr(m, "scratch"):
                m.scratch = scratch
        # later forwards of a shape repeat its recorded kernel calls (replay.py)
        self._replayer = None
        if backend == "cpu" and isinstance(graph_module, fx.GraphModule):
            from .replay import Replayer

            self._replayer = Replayer(graph_module, scratch)
        self._warm: set[tuple] = set()  # shapes run once on the Python path (replay: next)

    def __call__(self, *args, **kwargs):
        # A shape replayed as one native call goes to it straight from here: the module call's
        # machinery and the checks around it, run with the interpreter's data just evicted by
        # the kernels, cost 8-20 us of a 1.8 ms batch-1 call (docs/compiler.md).
        if len(args) == 1 and not kwargs and not _hooked(self):
            out = self._chained(args[0])
            if out is not None:
                return out
        return super().__call__(*args, **kwargs)

    def forward(self, *args, **kwargs):
        if len(args) == 1 and not kwargs:
            out = self._chained(args[0])
            if out is not None:
                return out
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise CompileError(
                "a compiled model is inference-only: no gradients flow through its "
                "kernels; attack or train the model given to edgeguard.compile"
            )
        if self._reference is not None and not all(_finite(t) for t in tensors):
            return self._reference_forward(args, kwargs)
        if len(tensors) == 1 and tuple(tensors[0].shape) not in self._built:
            self._new_shape(tuple(tensors[0].shape))
        # Layers reuse their buffers between calls, so calls are serialised and tensor outputs are
        # copied out (a conv output returned as is would be overwritten by the next call).
        with self._lock, torch.no_grad(), compiled_call():
            try:
                out = self._run(args, kwargs, tensors)
            except CompileError as err:
                shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
                compiled_for = (
                    f"compiled for input {self.input_shape}" if self.input_shape else ("compiled")
                )
                raise CompileError(
                    f"input {shapes} does not fit this model ({compiled_for}): {err}"
                ) from None
            return _copied(out)

    def _chained(self, x) -> torch.Tensor | None:
        """The output for ``x`` from one call of the chain runner (``replay.Chain``), where this
        shape's whole forward was recorded as one run and ``x`` can be read as it is; None to
        take the general path (which also computes a NaN or Inf input with the reference)."""
        rep = self._replayer
        if rep is None or not rep.chains or not isinstance(x, torch.Tensor):
            return None
        chain = rep.chains.get((x.shape, torch.get_num_threads()))
        if (
            chain is None
            or not chain.takes(x)
            or (x.requires_grad and torch.is_grad_enabled())
            or exporting()
            or torch._C._autograd._profiler_enabled()
            or torch._C._get_tracing_state() is not None
        ):
            return None
        with self._lock:
            return chain(x, self._reference is not None)

    def _run(self, args: tuple, kwargs: dict, tensors: list[torch.Tensor]):
        """The graph on ``args``: through the replayer once the shape ran before (its first
        forward allocates the buffers the recorded calls then reuse), else as Python."""
        rep = self._replayer
        if (
            rep is None
            or not rep.active()
            or kwargs
            or len(tensors) != len(args)
            or exporting()
            or torch._C._autograd._profiler_enabled()  # profiled: the labelled layers
            or any(t.device.type != "cpu" for t in tensors)
        ):
            return self.module(*args, **kwargs)
        key = (tuple(tuple(t.shape) for t in tensors), torch.get_num_threads())
        if key not in self._warm:
            self._warm.add(key)
            return self.module(*args)
        return rep(args)

    def _apply(self, fn, *args, **kwargs):
        if self._replayer is not None:  # recorded pointers name the old tensors
            self._replayer.clear()
            self._warm.clear()
        return super()._apply(fn, *args, **kwargs)

    def build_for(self, shape: tuple[int, ...], fuse: bool = False) -> None:
        """Generate and build every kernel for inputs of ``shape`` now (in one parallel build);
        ``fuse``: let large conv outputs take their max pool (first shape only)."""
        from .backends import get_backend

        self._built.add(tuple(shape))
        if not get_backend(self.backend).builds_per_shape:
            return
        from .build import build_kernels

        t0 = time.perf_counter()
        n = build_kernels(self, tuple(shape), fuse=fuse)
        if fuse and self._replayer is not None:  # fusing may have changed the graph (after
            self._replayer.clear()  # the build: its dry run may have analysed the old one)
        # its dry run (the standard ops) is not the warm-up call a recording needs: the first
        # real call of this shape allocates the buffers and runs on Python
        self._warm = {k for k in self._warm if k[0] != (tuple(shape),)}
        log.info(
            "kernels for input %s: %d layers in %.1f s", tuple(shape), n, time.perf_counter() - t0
        )

    def _new_shape(self, shape: tuple[int, ...]) -> None:
        from .backends import get_backend

        if not get_backend(self.backend).builds_per_shape:
            self._built.add(shape)
            return
        log.info(
            "input %s is a new size for this compiled model: building its kernels (give every "
            "size as compile_model(..., input_shape=[...]) to build them ahead)",
            shape,
        )
        try:
            self.build_for(shape)
        except CompileError:
            self._built.discard(shape)  # a wrong shape: the forward below says what is wrong
        except Exception:
            self._built.discard(shape)
            raise

    def _reference_forward(self, args, kwargs):
        model = self._reference
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        with self._lock, torch.no_grad():
            model.eval()
            try:
                move = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
                out = model(
                    *move,
                    **{
                        k: v.to(dev) if isinstance(v, torch.Tensor) else v
                        for k, v in kwargs.items()
                    },
                )
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


def input_shapes(spec) -> list[tuple[int, ...]]:
    """``None``, one shape ``(N, C, ...)`` or a list of shapes -> a list of shape tuples."""
    if spec is None:
        return []
    if len(spec) and all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        return [tuple(spec)]
    shapes = [tuple(s) for s in spec]
    if not shapes or any(
        not s or not all(isinstance(v, int) and not isinstance(v, bool) for v in s) for s in shapes
    ):
        raise CompileError(
            f"input_shape must be a shape of positive integers or a list of shapes, got {spec!r}"
        )
    return shapes


def _hooked(m: nn.Module) -> bool:
    """Whether a call of ``m`` runs hooks (its own or global ones): then it takes
    ``nn.Module.__call__``, which runs them."""
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def _finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf: one summing pass (NaN and Inf make the sum
    non-finite), the element-wise check only when the sum is not finite (it may overflow)."""
    if not t.is_floating_point() or math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


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
