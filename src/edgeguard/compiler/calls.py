"""Which compiled call is running: a layer that keeps its output buffer between calls must not hand
the same buffer out twice within one call (a module used twice in a forward); and whether an ONNX
export is tracing the model (the layers then take their standard-operator form)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import torch

try:  # the two flags torch.onnx.is_in_onnx_export reads, looked up once: it imports them per call
    from torch.onnx._internal.exporter import _flags as _dynamo_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _TS_GLOBALS
except ImportError:  # another PyTorch layout: the public function
    _dynamo_flags = _TS_GLOBALS = None


class _State(threading.local):
    """Per thread: the recorder of the compiled forward's segment being recorded
    (``replay.Recorder``), to which the kernels report their native calls; else ``None``."""

    recorder = None


STATE = _State()

_CURRENT: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "edgeguard_compiled_call", default=None
)


@contextlib.contextmanager
def compiled_call() -> Iterator[None]:
    """Marks one call of a compiled model (:class:`~edgeguard.compiler.CompiledModel`)."""
    token = _CURRENT.set(object())
    try:
        yield
    finally:
        _CURRENT.reset(token)


def in_compiled_call() -> bool:
    """Whether a compiled model's forward is running (its layers' inputs are then its own
    buffers, never a caller's tensor, wherever the compiler's passes said so)."""
    return _CURRENT.get() is not None


def first_use(module: object) -> bool:
    """True the first time ``module`` runs within the current compiled call (and outside one);
    False when it already ran in this call, so its kept buffer still holds a live output."""
    call = _CURRENT.get()
    if call is None:
        return True
    seen = getattr(module, "_edgeguard_call", None) is call
    object.__setattr__(module, "_edgeguard_call", call)
    return not seen


def exporting() -> bool:
    """``torch.onnx.is_in_onnx_export()``, without its per-call imports (1.9 us, once per layer
    call; a batch-1 CIFAR model's layers run in tens of microseconds)."""
    if _TS_GLOBALS is None or _dynamo_flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(_TS_GLOBALS.in_onnx_export or _dynamo_flags._is_onnx_exporting)
