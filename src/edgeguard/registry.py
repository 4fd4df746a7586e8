"""Name registries (models, datasets, schemes, pruners, attacks, graph attacks, detectors) share one
way to look a name up and to call its factory with user-given settings, so every registry refuses
an unknown name or setting the same way: one line naming what is accepted."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .errors import EdgeguardError


def lookup(
    registry: Mapping[str, Any],
    name: str,
    kind: str,
    error: type[EdgeguardError],
    extra: tuple[str, ...] = (),
) -> Any:
    """``registry[name]``, or ``error`` listing the available names (and ``extra`` aliases)."""
    if not isinstance(name, str) or name not in registry:
        names = ", ".join([*sorted(registry), *extra])
        raise error(f"unknown {kind} {name!r}; available: {names}")
    return registry[name]


def accepted_settings(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword settings ``factory`` takes (following ``**kwargs`` up a class hierarchy), or None
    when it takes any."""
    classes = factory.__mro__ if isinstance(factory, type) else (factory,)
    names: list[str] = []
    for cls in classes:
        fn = vars(cls).get("__init__") if isinstance(factory, type) else cls
        if fn is None:
            continue
        params = inspect.signature(fn).parameters.values()
        names += [
            p.name
            for p in params
            if p.name != "self"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in names
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None if not isinstance(factory, type) else names


def construct(
    factory: Callable[..., Any],
    name: str,
    kind: str,
    error: type[EdgeguardError],
    *args: Any,
    also: tuple[str, ...] = (),
    **settings: Any,
) -> Any:
    """``factory(*args, **settings)``; settings it does not take raise ``error`` naming them and
    the accepted ones (checked before the call, so a TypeError inside the factory stays a bug).
    ``also``: settings taken through ``**kwargs`` that the signature does not show."""
    accepted = accepted_settings(factory)
    if accepted is not None:
        accepted = [*accepted, *(a for a in also if a not in accepted)]
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise error(
                f"{kind} {name!r} takes no setting {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
    return factory(*args, **settings)
