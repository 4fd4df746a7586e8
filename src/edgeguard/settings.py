"""Settings read from the environment, in one place.

``EDGEGUARD_DATA``: the folder of the shared real data (``planetoid/``, ``graphs/``, ``persons/``);
default ``../shared/data``, relative to the working directory (the repository root for ``make``)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "EDGEGUARD_DATA"
DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> Path:
    """The shared data folder (it may be absent: callers say so and skip)."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)
