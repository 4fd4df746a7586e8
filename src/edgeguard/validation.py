"""Checks of user-given numbers and tensors, shared by every package, so that each rejects NaN, Inf,
booleans and out-of-range values the same way and says what is accepted.  Each check raises the
caller's error class (a subclass of :class:`~edgeguard.errors.EdgeguardError`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import EdgeguardError, UsageError


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
    error: type[EdgeguardError] = UsageError,
) -> float:
    """``value`` as a finite float in the given interval (NaN, Inf and booleans are refused).

    ``minimum``/``maximum`` bound the interval, exclusive with ``open_min``/``open_max``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_max else value <= maximum
    if not ok:
        raise error(
            f"{name} must be a finite number{_interval(minimum, maximum, open_min, open_max)},"
            f" got {value!r}"
        )
    return float(value)


def check_positive(
    value: Any, name: str, *, allow_zero: bool = False, error: type[EdgeguardError] = UsageError
) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    return check_number(value, name, minimum=0.0, open_min=not allow_zero, error=error)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    error: type[EdgeguardError] = UsageError,
) -> int:
    """An integer (not a bool, not a float) in ``[minimum, maximum]``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_finite(
    tensor: torch.Tensor, name: str, *, error: type[EdgeguardError] = UsageError
) -> torch.Tensor:
    """``tensor`` unchanged if every value is finite; otherwise an error counting NaN and Inf."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            nan = int(torch.isnan(tensor).sum())
            raise error(
                f"{name} holds {nan} NaN and {int(bad.sum()) - nan} infinite values; "
                "only finite values are accepted"
            )
    return tensor


def _interval(lo: float | None, hi: float | None, open_lo: bool, open_hi: bool) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if open_lo else '>='} {lo:g}"
    if lo is None:
        return f" {'<' if open_hi else '<='} {hi:g}"
    return f" in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
