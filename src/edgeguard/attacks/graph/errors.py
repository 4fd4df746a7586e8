"""The graph attacks' error."""

from __future__ import annotations

import logging

from ...errors import EdgeguardError

log = logging.getLogger(__name__)


class GraphAttackError(EdgeguardError, ValueError):
    """Invalid graph, budget, nodes or settings."""
