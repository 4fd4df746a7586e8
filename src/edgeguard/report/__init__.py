"""HTML reports with PNG figures (nothing in the library imports this package)."""

from .html import Report

__all__ = ["Report"]
