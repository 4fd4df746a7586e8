"""Reproducibility: one call seeds Python, NumPy and PyTorch."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and PyTorch (CPU and CUDA) with ``seed`` (a non-negative int)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
