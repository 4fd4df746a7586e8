"""Errors for dataset loading."""

from __future__ import annotations

from ..errors import EdgeguardError


class DatasetError(EdgeguardError, FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout (the message shows it)."""
