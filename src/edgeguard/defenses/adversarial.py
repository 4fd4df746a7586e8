"""PGD adversarial training (Madry et al., 2018) through the engine: every training batch is replaced
(or, with ``mix < 1``, partly replaced) by adversarial examples of the current model; resumable,
with the engine's progress bar and per-epoch log."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks import PGD, Attack, AttackError
from ..engine import History, TrainConfig, fit


class AdversarialBatches:
    """``transform(model, x, y)`` for :func:`edgeguard.engine.fit`: adversarial examples of the model
    being trained, crafted in eval mode (BatchNorm statistics are not updated by the attack)."""

    def __init__(self, attack: Attack, mix: float = 1.0) -> None:
        if not isinstance(attack, Attack):
            raise AttackError(f"attack must be an edgeguard Attack, got {type(attack).__name__}")
        if not 0 < mix <= 1:
            raise AttackError(
                f"mix (share of adversarial examples per batch) must be in (0, 1], got {mix}"
            )
        self.attack, self.mix = attack, mix

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = max(1, round(self.mix * len(x)))
        was_training = model.training
        model.eval()
        try:
            adv = self.attack.run(model, x[:k], y[:k]).adversarial
        finally:
            model.train(was_training)
        return torch.cat([adv, x[k:]]) if k < len(x) else adv


def adversarial_training(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    attack: Attack | None = None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    mix: float = 1.0,
) -> History:
    """Train ``model`` on adversarial examples of ``attack`` (default PGD L-inf, eps 8/255, 10 steps,
    random start)."""
    attack = attack or PGD(eps=8 / 255, steps=10, seed=None)
    return fit(
        model,
        train_set,
        val_set,
        config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        input_transform=AdversarialBatches(attack, mix),
    )


def robust_accuracy(
    model: nn.Module, dataset: Dataset, attack: Attack, batch_size: int = 256
) -> float:
    """Accuracy of ``model`` on ``attack``'s adversarial examples of ``dataset`` (in [0, 1])."""
    correct = total = 0
    model.eval()
    for x, y in DataLoader(dataset, batch_size=batch_size):
        adv = attack(model, x, y)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
        total += len(y)
    return correct / max(1, total)
