"""Structured sparsity for Conv1d/2d/3d and Linear: WHAT is pruned.

Schemes (``get_scheme(name, **options)``): ``filter``, ``channel``, ``column``, ``vanilla`` (RT3D
kernel groups) and ``kgs`` (RT3D kernel-group structured sparsity).  Whole graphs:
``prune_channels`` removes coupled channels physically (dependency-aware, through depthwise convs,
squeeze-excite, residual adds and concatenations).
"""

from . import channel, column, filter, kgs, vanilla  # noqa: F401  (register the schemes)
from .base import (
    SparsityError,
    SparsityScheme,
    UnitLayout,
    available_schemes,
    check_rate,
    get_scheme,
    register_scheme,
    scheme_from_spec,
)
from .channel import ChannelSparsity
from .channel_graph import ChannelGraph, ChannelPruning, prune_channels
from .column import ColumnSparsity
from .filter import FilterSparsity
from .kgs import KernelGroupSparsity
from .model import (
    PruneResult,
    apply_masks,
    attach_masks,
    detach_masks,
    get_masks,
    load_profile,
    prunable_layers,
    prune_model,
)
from .vanilla import VanillaSparsity

__all__ = [
    "ChannelGraph",
    "ChannelPruning",
    "ChannelSparsity",
    "ColumnSparsity",
    "FilterSparsity",
    "KernelGroupSparsity",
    "PruneResult",
    "SparsityError",
    "SparsityScheme",
    "UnitLayout",
    "VanillaSparsity",
    "apply_masks",
    "attach_masks",
    "available_schemes",
    "check_rate",
    "detach_masks",
    "get_masks",
    "get_scheme",
    "load_profile",
    "prunable_layers",
    "prune_channels",
    "prune_model",
    "register_scheme",
    "scheme_from_spec",
]
