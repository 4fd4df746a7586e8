"""A training run's resumable state: what a checkpoint holds, and the checks before a resume."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..masks import masks_of, set_mask
from .checkpoint import CheckpointError
from .config import TrainConfig


def _state(model, optimizer, scheduler, epoch, history, cfg) -> dict[str, Any]:
    masks = {n: mask.cpu() for n, mask in masks_of(model).items()}
    return {
        "format": "edgeguard.train/1",
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": masks,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "history": history.epochs,
        "config": asdict(cfg),
        "arch": getattr(model, "edgeguard_arch", None) or {},
        "torch_rng": torch.get_rng_state(),
    }


# settings that do not change the trained weights (diverge only stops a run): a resumed run
# may differ in these
_RUNTIME_SETTINGS = ("progress", "num_workers", "device", "diverge")


def _check_same_config(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume ``path`` with settings other than those it was trained with."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} records no training settings; it cannot be resumed")
    given = asdict(cfg)
    # a setting added since the checkpoint was written: it was trained with the default
    default = asdict(TrainConfig())
    diff = [
        f"{k}: stored {stored.get(k, default[k])!r}, given {v!r}"
        for k, v in given.items()
        if k not in _RUNTIME_SETTINGS and stored.get(k, default[k]) != v
    ]
    if diff:
        raise CheckpointError(
            f"cannot resume {path} with other settings ({'; '.join(diff)}); "
            "use the stored settings or start a new run"
        )


def _restore(model, optimizer, scheduler, state, path) -> None:
    if state.get("format") != "edgeguard.train/1":
        raise CheckpointError(f"{path} is not an edgeguard training checkpoint")
    missing = [k for k in ("epoch", "model", "optimizer", "torch_rng") if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: truncated or not written by edgeguard"
        )
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"checkpoint {path}: epoch must be an integer >= 0, got {epoch!r}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model/optimizer: {err}"
        ) from None
    for name, mask in state.get("masks", {}).items():
        module = dict(model.named_modules()).get(name)
        if module is None or module.weight.shape != mask.shape:
            raise CheckpointError(f"checkpoint {path}: mask for {name!r} does not fit the model")
        set_mask(module, mask)
    try:
        torch.set_rng_state(state["torch_rng"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: invalid random-number state ({err})") from None
