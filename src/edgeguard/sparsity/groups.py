"""Kernel groups shared by the vanilla and KGS schemes (RT3D).

A kernel group is ``gm`` filters x ``gn`` input channels.  When ``gm`` does not divide the number of
filters (or ``gn`` the number of channels) the last group along that axis is smaller (``F % gm``
filters): it is a unit of its own, scored by its own norm, never skipped.
"""

from __future__ import annotations

from .base import SparsityError


def check_group_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SparsityError(f"{what} must be an integer >= 1, got {value!r}")
    return value
