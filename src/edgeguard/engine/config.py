"""What a training run is made of: its settings, its history, the device, optimiser, schedule and
precision they select."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from .optim import RelativeAdam

OPTIMIZERS = ("sgd", "adam", "adamw", "adam-relative")


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        epochs: number of passes over the training set (>= 1).
        batch_size: per-process batch size.
        lr: learning rate; optimizer: "sgd" (momentum 0.9, nesterov), "adam" / "adamw", or
            "adam-relative" (each filter's step scaled by its RMS: ``lr`` is a relative change per
            step; for batch-norm-folded networks, :mod:`.optim`).
        weight_decay: L2 weight decay.
        scheduler: "cosine" (per epoch, to 0) or "none".
        amp: mixed precision (bfloat16 autocast on CPU, float16 + grad scaling on CUDA).
        seed: seeds the data order (per epoch), so a resumed run sees the same batches.
        device: "cpu", "cuda" or "auto".
        progress: show a progress bar per epoch (main process only).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        warmup_epochs: linear learning-rate warmup over this many epochs (fractions allowed), per
            step from lr/steps to lr; helps from-scratch video models leave their initial plateau.
        ema: decay in [0, 1) of an exponential moving average of the weights, updated after every
            step (0: off).  The callbacks, the validation and the returned model see the average;
            training goes on from the raw weights (both are checkpointed), so what a callback
            writes into the weights is dropped (masks it sets stay): leave it off for methods that
            update weights in callbacks (ADMM's projection).
        diverge: stop with :class:`~edgeguard.errors.TrainingDiverged` when an epoch's mean
            training loss exceeds this many times the lowest epoch mean before it (0: off; > 1;
            only while that lowest mean is positive).  The epoch is not checkpointed, so
            ``last.pt`` keeps the one before; a run that diverged needs a new run with a smaller
            step.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    ema: float = 0.0
    diverge: float = 0.0

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.scheduler not in ("cosine", "none"):
            raise ConfigError(f"scheduler must be 'cosine' or 'none', got {self.scheduler!r}")
        if not (
            isinstance(self.warmup_epochs, int | float) and 0 <= self.warmup_epochs <= self.epochs
        ):
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if not (isinstance(self.ema, int | float) and 0.0 <= self.ema < 1.0):
            raise ConfigError(f"ema must be a decay in [0, 1) (0: off), got {self.ema!r}")
        if not (
            isinstance(self.diverge, int | float)
            and math.isfinite(self.diverge)
            and (self.diverge == 0 or self.diverge > 1)
        ):
            raise ConfigError(f"diverge must be 0 (off) or a factor > 1, got {self.diverge!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")


@dataclass
class History:
    """One dict per finished epoch: epoch, train_loss, train_acc, val_loss, val_acc, seconds."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None  # the epoch whose weights were kept (validation selection)

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam-relative":
        return RelativeAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Per-epoch cosine annealing to 0 (``cfg.scheduler == "cosine"``) or None."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)
