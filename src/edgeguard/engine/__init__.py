"""Training engine: loops, checkpoints, seeding, distributed runs (serves every other package)."""

from .atomic import atomic_path
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .seeding import seed_everything
from .train import History, TrainConfig, evaluate, fit, resolve_device

__all__ = [
    "CheckpointError",
    "History",
    "TrainConfig",
    "atomic_path",
    "evaluate",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
