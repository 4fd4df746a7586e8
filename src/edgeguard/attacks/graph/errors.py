"""The graph attacks' error."""

from __future__ import annotations

from ...errors import EdgeguardError


class GraphAttackError(EdgeguardError, ValueError):
    """Invalid graph, budget, nodes or settings."""
