"""Training and evaluation loops for classifiers, with progress bars, an atomic checkpoint every epoch,
``resume``, seeding, optional mixed precision, sparsity masks kept applied, and torchrun/DDP support."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..errors import ConfigError, TrainingDiverged
from ..masks import apply_masks
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    History,
    TrainConfig,
    _autocast,
    _make_optimizer,
    _make_scheduler,
    resolve_device,
)
from .distributed import all_reduce_sum, barrier, distributed_group, is_main_process, world_size
from .ema import WeightAverage
from .state import _check_same_config, _restore, _state

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    amp: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy loss and top-1 accuracy (in [0, 1]) of ``model`` on ``dataset`` (items are
    ``(input, label)``).  The model's training mode is restored afterwards."""
    dev = resolve_device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        with _autocast(dev, amp):
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise ConfigError("cannot evaluate on an empty dataset")
    return {"loss": loss_sum / count, "accuracy": correct / count}


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    callbacks: Sequence[Callable[[int, nn.Module, dict[str, float]], None]] = (),
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    distill_temperature: float = 4.0,
    extra_state: Any = None,
    input_transform: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> History:
    """Train a classifier with cross-entropy (or any model with ``loss_fn``).

    Args:
        model: the network; masks attached by ``edgeguard.sparsity`` stay applied after every step.
        train_set, val_set: datasets of ``(input tensor, int label)``.
        config: ``TrainConfig``; defaults if None.
        checkpoint_dir: if given, ``last.pt`` is written there atomically after every epoch.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists (model, masks, optimizer,
            scheduler, history, RNG); a finished run returns its history at once.
        penalty: ``penalty(model) -> scalar`` added to the loss (structured regularisation).
        callbacks: ``cb(epoch, model, metrics)`` after each epoch (e.g. reweighting).
        input_transform: ``transform(model, x, y) -> x'`` applied to every training batch before the
            forward pass (adversarial training: :mod:`edgeguard.defenses`).
        teacher, distill_weight, distill_temperature: optional knowledge distillation, loss =
            (1 - w) * CE + w * T^2 * KL(student_T || teacher_T).
        extra_state: an object with ``state_dict()`` / ``load_state_dict()`` (tensors and plain data)
            saved in every checkpoint and restored on resume, e.g. a pruner's auxiliary variables.
        loss_fn: ``loss_fn(net, x, y) -> scalar`` replaces cross-entropy (it calls the network
            itself, e.g. to match a teacher detector's outputs); no accuracy is counted, and
            ``val_set`` and the classifier distillation must be left out (evaluate in a callback).

    Under ``torchrun`` the model is wrapped in DistributedDataParallel and the training set is
    sharded; checkpoints and logs come from rank 0 only; every rank ends with the same weights.
    """
    cfg = config or TrainConfig()
    cfg.validate()
    if loss_fn is not None and (val_set is not None or teacher is not None):
        raise ConfigError(
            "fit with loss_fn trains on that loss alone: pass val_set=None and no teacher "
            "(evaluate in a callback; distil inside loss_fn)"
        )
    dev = resolve_device(cfg.device)
    with distributed_group(dev):
        model.to(dev)
        if teacher is not None:
            teacher.to(dev).eval()
        optimizer = _make_optimizer(model, cfg)
        scheduler = _make_scheduler(optimizer, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and dev.type == "cuda")
        history = History()
        ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        start_epoch = 0
        ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
        if resume and ckpt_path is not None and ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            _check_same_config(state, cfg, ckpt_path)
            _restore(model, optimizer, scheduler, state, ckpt_path)
            if extra_state is not None:
                if extra_state.state_dict() and not state.get("extra"):
                    raise CheckpointError(
                        f"{ckpt_path} holds no {type(extra_state).__name__} state "
                        "(auxiliary variables) to resume from"
                    )
                extra_state.load_state_dict(state.get("extra", {}))
            if ema is not None:
                if "ema" not in state:
                    raise CheckpointError(f"{ckpt_path} holds no weight average to resume from")
                ema.load_state_dict(state["ema"])
            history.epochs = list(state.get("history", []))
            start_epoch = int(state["epoch"])
            log.info("resumed from %s at epoch %d/%d", ckpt_path, start_epoch, cfg.epochs)
        apply_masks(model)

        distributed = world_size() > 1
        net: nn.Module = DistributedDataParallel(model) if distributed else model
        sampler = (
            DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=False)
            if distributed
            else None
        )
        show = cfg.progress and is_main_process()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
                loader = DataLoader(
                    train_set, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers
                )
            else:
                # a per-epoch generator makes the order a function of (seed, epoch): resuming
                # replays it
                gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                loader = DataLoader(
                    train_set,
                    cfg.batch_size,
                    shuffle=True,
                    generator=gen,
                    num_workers=cfg.num_workers,
                )
            net.train()
            loss_sum, correct, count = 0.0, 0, 0
            epoch_lrs = [g["lr"] for g in optimizer.param_groups]
            warm_steps = round(cfg.warmup_epochs * len(loader))
            bar = tqdm(
                loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False
            )
            for step, (x, y) in enumerate(bar):
                global_step = epoch * len(loader) + step
                if global_step < warm_steps:
                    for g, lr in zip(optimizer.param_groups, epoch_lrs, strict=True):
                        g["lr"] = lr * (global_step + 1) / warm_steps
                x, y = x.to(dev), y.to(dev)
                if input_transform is not None:
                    x = input_transform(model, x, y)
                with _autocast(dev, cfg.amp):
                    out = net(x) if loss_fn is None else None
                    loss = (
                        loss_fn(net, x, y)
                        if out is None
                        else nn.functional.cross_entropy(
                            out.float(), y, label_smoothing=cfg.label_smoothing
                        )
                    )
                    if teacher is not None and distill_weight > 0:
                        with torch.no_grad():
                            t_out = teacher(x).float()
                        t = distill_temperature
                        kd = nn.functional.kl_div(
                            nn.functional.log_softmax(out.float() / t, 1),
                            nn.functional.log_softmax(t_out / t, 1),
                            reduction="batchmean",
                            log_target=True,
                        )
                        loss = (1 - distill_weight) * loss + distill_weight * t * t * kd
                total = loss + penalty(model) if penalty is not None else loss
                if not torch.isfinite(total):
                    raise TrainingDiverged(
                        f"loss became {total.item()} at epoch {epoch + 1}; lower the learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
                apply_masks(model)
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.item() * len(x)
                count += len(x)
                if out is None:
                    bar.set_postfix(loss=f"{loss_sum / count:.4f}")
                else:
                    correct += (out.argmax(1) == y).sum().item()
                    bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
            for g, lr in zip(optimizer.param_groups, epoch_lrs, strict=True):
                g["lr"] = lr  # the scheduler's recursion must see its own value, not the warmup's
            if scheduler is not None:
                scheduler.step()
            loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count])
            metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)}
            if loss_fn is None:
                metrics["train_acc"] = correct / max(count, 1)
            _check_divergence(history, metrics["train_loss"], cfg.diverge, ckpt_path)
            # the validation and the callbacks see the weight average, training goes on from
            # the raw weights
            with ema.applied(model) if ema is not None else nullcontext():
                if val_set is not None:
                    ev = evaluate(model, val_set, cfg.batch_size, dev, cfg.amp)
                    metrics |= {"val_loss": ev["loss"], "val_acc": ev["accuracy"]}
                metrics["seconds"] = time.perf_counter() - t0
                history.epochs.append(metrics)
                for cb in callbacks:
                    cb(epoch, model, metrics)
            if is_main_process():
                log.info(
                    "epoch %d/%d  %s",
                    epoch + 1,
                    cfg.epochs,
                    "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"),
                )
                if ckpt_path is not None:
                    state = _state(model, optimizer, scheduler, epoch + 1, history, cfg)
                    if extra_state is not None:
                        state["extra"] = extra_state.state_dict()
                    if ema is not None:
                        state["ema"] = ema.state_dict()
                    save_checkpoint(state, ckpt_path)
            barrier()
        if ema is not None:  # the run's result is the average
            ema.copy_to(model)
        return history


def _check_divergence(history: History, loss: float, factor: float, ckpt_path: Path | None) -> None:
    """Raise TrainingDiverged when ``loss`` (this epoch's mean) exceeds ``factor`` times the lowest
    epoch mean of ``history``; never with factor 0, no epoch yet or a lowest mean <= 0."""
    best = min((e["train_loss"] for e in history.epochs), default=math.inf)
    if factor == 0 or not 0 < best < math.inf or loss <= factor * best:
        return
    epoch = len(history.epochs) + 1
    kept = f"; {ckpt_path} keeps epoch {epoch - 1}" if ckpt_path is not None else ""
    raise TrainingDiverged(
        f"training diverged: epoch {epoch}'s mean loss {loss:.4g} is {loss / best:.1f}x the best "
        f"epoch's {best:.4g} (limit {factor:g}x){kept}; start a new run with a smaller learning "
        "rate or a warm-up"
    )


__all__ = ["History", "TrainConfig", "evaluate", "fit", "resolve_device"]
