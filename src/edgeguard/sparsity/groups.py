"""Kernel groups shared by the vanilla and KGS schemes (RT3D).

A kernel group is ``gm`` filters x ``gn`` input channels.  When ``gm`` does not divide the number of
filters (or ``gn`` the number of channels) the last group along that axis is smaller (``F % gm``
filters): it is a unit of its own, scored by its own norm, never skipped.
"""

from __future__ import annotations

from typing import Any

from .. import validation
from .base import SparsityError, SparsityScheme


def check_group_size(value: object, what: str) -> int:
    return validation.check_int(value, what, error=SparsityError)


class KernelGroupScheme(SparsityScheme):
    """Common settings of kernel-group schemes: ``gm`` filters x ``gn`` input channels per group."""

    def __init__(self, gm: int = 8, gn: int = 4) -> None:
        self.gm = check_group_size(gm, "gm (filters per kernel group)")
        self.gn = check_group_size(gn, "gn (input channels per kernel group)")

    def options(self) -> dict[str, Any]:
        return {"gm": self.gm, "gn": self.gn}
