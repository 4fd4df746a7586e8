"""Which compiled call is running: a layer that keeps its output buffer between calls must not hand
the same buffer out twice within one call (a module used twice in a forward)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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


def first_use(module: object) -> bool:
    """True the first time ``module`` runs within the current compiled call (and outside one);
    False when it already ran in this call, so its kept buffer still holds a live output."""
    call = _CURRENT.get()
    if call is None:
        return True
    seen = getattr(module, "_edgeguard_call", None) is call
    object.__setattr__(module, "_edgeguard_call", call)
    return not seen
