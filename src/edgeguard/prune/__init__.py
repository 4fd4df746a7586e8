"""HOW models are pruned: one protocol (regularise -> hard prune -> masked fine-tune), one file per
method: ``magnitude`` (one-shot baseline), ``reweighted`` (RT3D), ``admm``, ``primal-proximal``
(SS-Auto)."""

from . import admm, gradual, magnitude, primal_proximal, reweighted  # noqa: F401  (register the methods)
from .admm import ADMMPruner
from .base import Pruner, available_pruners, get_pruner, register_pruner
from .distill import (
    DetectorDistillation,
    check_distillable,
    cut_classes,
    detector_ap,
    detector_layers,
    head_convs,
    prune_detector,
    with_net,
)
from .gradual import GradualPruner
from .magnitude import MagnitudePruner
from .pipeline import PruningOutcome, run_pruning
from .primal_proximal import PrimalProximalPruner
from .reweighted import ReweightedPruner

__all__ = [
    "ADMMPruner",
    "DetectorDistillation",
    "GradualPruner",
    "MagnitudePruner",
    "PrimalProximalPruner",
    "Pruner",
    "PruningOutcome",
    "ReweightedPruner",
    "available_pruners",
    "check_distillable",
    "cut_classes",
    "detector_ap",
    "detector_layers",
    "get_pruner",
    "head_convs",
    "prune_detector",
    "register_pruner",
    "run_pruning",
    "with_net",
]
