"""The attack protocol: ``attack(model, inputs, labels, target=None) -> adversarial inputs``.

Inputs are images in [0, 1]; any normalisation lives in the model (wrap it with :class:`Normalize`).
``attack.run(...)`` returns an :class:`AttackResult` with success flags, distortion norms and query
counts.  Attacks never modify the caller's tensors, and run a model that is in training mode in eval
mode (with a warning), restoring its mode afterwards.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation
from ..errors import EdgeguardError


class AttackError(EdgeguardError, ValueError):
    """Invalid attack settings or inputs."""


NORMS = ("linf", "l2", "l1")


class Normalize(nn.Module):
    """``model(normalize(x))`` with per-channel ``mean``/``std``, so attacks work in [0, 1] pixels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise AttackError(
                f"mean and std need one value per channel and std > 0, got {mean}, {std}"
            )
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.train(model.training)  # the wrapper takes the wrapped model's mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.model((x - self.mean.view(shape)) / self.std.view(shape))


@dataclass
class AttackResult:
    """Outcome of one batched attack.

    Attributes:
        adversarial: ``[N, ...]`` adversarial inputs in [0, 1].
        success: ``[N]`` bool: misclassified (untargeted) or classified as the target (targeted).
        distortion: ``{"linf"|"l2"|"l1": [N]}`` norms of ``adversarial - inputs`` per sample.
        queries: ``[N]`` model evaluations spent per sample (forward passes; gradient attacks count
            one per forward-backward).
    """

    adversarial: torch.Tensor
    success: torch.Tensor
    distortion: dict[str, torch.Tensor]
    queries: torch.Tensor

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    def mean_distortion(self, norm: str = "l2", successful_only: bool = True) -> float:
        d = self.distortion[norm]
        d = d[self.success] if successful_only and self.success.any() else d
        return float(d.mean())


def distortions(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = delta.flatten(1)
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l1": flat.abs().sum(1)}


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    return validation.check_positive(value, name, allow_zero=allow_zero, error=AttackError)


def check_steps(value: Any, name: str = "steps") -> int:
    return validation.check_int(value, name, error=AttackError)


def check_norm(norm: str, supported: Sequence[str]) -> str:
    if norm not in supported:
        raise AttackError(f"unknown norm {norm!r}; this attack supports {', '.join(supported)}")
    return norm


class Attack(ABC):
    """Base class: validation, eval mode, success bookkeeping; subclasses implement ``_perturb``."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf",)

    def __call__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.run(model, inputs, labels, target).adversarial

    def run(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> AttackResult:
        if not isinstance(model, nn.Module):
            raise AttackError(f"model must be an nn.Module, got {type(model).__name__}")
        was_training = model.training
        if was_training:
            warnings.warn("the model is in training mode; attacking it in eval mode", stacklevel=3)
            model.eval()  # before any forward pass: BatchNorm statistics must not move
        try:
            x, y, t = self._validate(model, inputs, labels, target)
            x_adv, queries = self._perturb(model, x, y, t)
            x_adv = x_adv.detach().clamp(0, 1)
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
        finally:
            if was_training:
                model.train()
        success = pred == t if t is not None else pred != y
        return AttackResult(x_adv, success, distortions(x_adv - x), queries)

    def _validate(self, model, inputs, labels, target):
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise AttackError(
                "inputs must be a floating-point tensor [N, C, ...] of images in [0, 1]"
            )
        if inputs.dim() < 2 or inputs.shape[0] == 0:
            raise AttackError(
                f"inputs must be a non-empty batch [N, C, ...], got shape {tuple(inputs.shape)}"
            )
        validation.check_finite(inputs, "inputs", error=AttackError)
        if inputs.min() < 0 or inputs.max() > 1:
            raise AttackError(
                f"inputs must be images in [0, 1] (got [{float(inputs.min()):.3g}, "
                f"{float(inputs.max()):.3g}]); put the normalisation in the model with Normalize"
            )
        x = inputs.detach().clone()
        with torch.no_grad():
            n_classes = model(x[:1]).shape[-1]

        def labels_of(v, what):
            if not isinstance(v, torch.Tensor) or v.dtype not in (torch.int64, torch.int32):
                raise AttackError(f"{what} must be an integer tensor [N]")
            if v.shape != (x.shape[0],):
                raise AttackError(
                    f"{what} has shape {tuple(v.shape)}; expected [{x.shape[0]}] (one per input)"
                )
            if v.min() < 0 or v.max() >= n_classes:
                raise AttackError(f"{what} must be in [0, {n_classes - 1}] for this model")
            return v.detach().clone().long().to(x.device)

        y = labels_of(labels, "labels")
        t = labels_of(target, "target") if target is not None else None
        return x, y, t

    @abstractmethod
    def _perturb(self, model, x, y, target) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (adversarial inputs, queries per sample)."""


def attack_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss to *maximise*: cross-entropy of the true label, or minus that of the target."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def input_gradient(model, x, y, target) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = attack_loss(model(x), y, target).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (eps / n).clamp(max=1.0)
        return delta * factor.view(-1, *[1] * (delta.dim() - 1))
    raise AttackError(f"projection onto {norm} is not implemented")


def normalized(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` (sign for L-inf, g / ||g||_2 for L2)."""
    if norm == "linf":
        return g.sign()
    n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / n.view(-1, *[1] * (g.dim() - 1))
