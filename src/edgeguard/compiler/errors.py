"""Errors of the compiler package."""

from __future__ import annotations

from ..errors import EdgeguardError


class CompileError(EdgeguardError, ValueError):
    """Invalid arguments to :func:`compile_model`, or input a compiled model cannot take."""
