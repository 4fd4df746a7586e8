"""Model zoo: video CNNs (C3D, R(2+1)D-18), image CNNs (digits, VGG-16/ResNet-18/MobileNetV2 for CIFAR), GNNs
(GCN, GraphSAGE) and MAC counting.  ``build(name, **kwargs)`` creates a model and records how, so that checkpoints can rebuild
it (``model.edgeguard_arch``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import construct, lookup
from .flops import FlopsReport, LayerFlops, count_flops
from .video import C3D, R2Plus1D, c3d, r2plus1d_18
from .vision import (
    DigitsCNN,
    MobileNetV2Cifar,
    ResNetCifar,
    VGGCifar,
    concept_cnn,
    digits_cnn,
    mobilenet_v2_cifar,
    resnet18_cifar,
    vgg16_cifar,
)


def _gcn(in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5) -> nn.Module:
    from .graph import gcn  # imported on use: torch_geometric comes with the "graph" extra

    return gcn(in_features, num_classes, hidden, dropout)


def _graphsage(
    in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5
) -> nn.Module:
    from .graph import graphsage

    return graphsage(in_features, num_classes, hidden, dropout)


def _person_cnn(width: int = 16) -> nn.Module:
    from .detectors.cnn import TinyPersonNet

    return TinyPersonNet(width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "c3d": c3d,
    "r2plus1d_18": r2plus1d_18,
    "digits_cnn": digits_cnn,
    "concept_cnn": concept_cnn,
    "vgg16_cifar": vgg16_cifar,
    "resnet18_cifar": resnet18_cifar,
    "mobilenet_v2_cifar": mobilenet_v2_cifar,
    "gcn": _gcn,
    "graphsage": _graphsage,
    "person_cnn": _person_cnn,
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name (one of ``MODELS``) and record ``{"name", "kwargs"}`` on it as
    ``model.edgeguard_arch`` (kwargs must be JSON-serialisable: numbers, strings, lists)."""
    model = construct(
        lookup(MODELS, name, "model", ConfigError), name, "model", ConfigError, **kwargs
    )
    model.edgeguard_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


__all__ = [
    "C3D",
    "MODELS",
    "DigitsCNN",
    "FlopsReport",
    "LayerFlops",
    "MobileNetV2Cifar",
    "R2Plus1D",
    "ResNetCifar",
    "VGGCifar",
    "build",
    "c3d",
    "concept_cnn",
    "count_flops",
    "digits_cnn",
    "mobilenet_v2_cifar",
    "r2plus1d_18",
    "resnet18_cifar",
    "vgg16_cifar",
]
