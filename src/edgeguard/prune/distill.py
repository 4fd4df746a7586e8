"""Label-free fine-tuning of a pruned detector: the dense detector is the teacher, and the pruned
network learns to reproduce its class scores and boxes on unlabeled photos.

:class:`DetectorDistillation` is the ``loss_fn`` of :func:`~edgeguard.engine.fit` and
:func:`~edgeguard.prune.run_pruning` (so regularisation, hard pruning and fine-tuning, checkpoints,
resume and progress come from the one pipeline); :func:`detector_ap` is its ``score``.  A detector
takes part through two members: ``prepare(images)`` (photos in [0, 1] to the graph's input) and
``distillation_loss(student_outputs, teacher_outputs)`` (see the CenterNet and NanoDet detectors).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine import TrainConfig
from ..models.detectors.base import PersonDetector
from ..models.detectors.train import evaluate_ap
from ..sparsity import SparsityError
from .base import Pruner
from .pipeline import PruningOutcome, run_pruning

log = logging.getLogger(__name__)


def _check_distillable(detector: PersonDetector) -> None:
    missing = [m for m in ("net", "prepare", "distillation_loss") if not hasattr(detector, m)]
    if missing:
        raise SparsityError(
            f"detector {getattr(detector, 'name', type(detector).__name__)!r} cannot be distilled: "
            f"it lacks {', '.join(missing)} (the COCO detectors centernet and nanodet have them)"
        )


def with_net(detector: PersonDetector, net: nn.Module) -> PersonDetector:
    """A copy of ``detector`` that runs ``net`` (e.g. its pruned graph) in place of its own; the
    detector's other modules and buffers are shared, not copied."""
    _check_distillable(detector)
    twin = copy.copy(detector)
    twin._modules = dict(detector._modules)  # copy.copy shares the module table: give it its own
    twin.net = net
    return twin


class DetectorDistillation:
    """``loss(net, images, _) -> scalar``: ``net`` (the student graph) and a frozen copy of the
    dense graph (the teacher) run on ``detector.prepare(images)``; the detector's
    ``distillation_loss`` compares their outputs.  ``images`` ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, detector: PersonDetector, teacher: nn.Module | None = None) -> None:
        _check_distillable(detector)
        self.detector = detector
        self.teacher = copy.deepcopy(detector.net if teacher is None else teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def __call__(self, net: nn.Module, images: torch.Tensor, _labels=None) -> torch.Tensor:
        inputs = self.detector.prepare(images)
        student = net(*inputs)
        with torch.no_grad():
            teacher = self.teacher(*inputs)
        return self.detector.distillation_loss(student, teacher)


def detector_ap(detector: PersonDetector, photos, net: nn.Module | None = None) -> float:
    """Person AP50 (VOC all-point, every annotated person a positive) of ``detector`` -- running
    ``net`` in place of its own graph when given -- on whole ``photos`` at their own size, scored
    down to 0.01 (the protocol of ``benchmarks/coco_detectors.py``)."""
    det = with_net(detector, net) if net is not None else detector
    with torch.no_grad():
        return evaluate_ap(det, photos, side=None, min_score=0.01)


def prune_detector(
    detector: PersonDetector,
    pruner: Pruner | str,
    images: Dataset,
    held_out,
    flops_reduction: float | None = None,
    rates=None,
    finetune: TrainConfig | None = None,
    regularize: TrainConfig | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    layers: list[str] | None = None,
) -> PruningOutcome:
    """Prune ``detector``'s graph with ``pruner`` (to ``flops_reduction`` x fewer MACs at the
    detector's input size, or to ``rates``) and fine-tune it by distillation from the dense graph
    on the unlabeled ``images`` (items ``(image [3, H, W] in [0, 1], _)``, e.g.
    :class:`~edgeguard.data.UnlabeledImages`); AP50 on the ``held_out`` photos is the score of each
    stage (``accuracy_*`` of the outcome).  The detector itself is left as it is: the pruned graph is
    ``outcome.model`` (``with_net(detector, outcome.model)`` detects with it)."""
    _check_distillable(detector)
    net = copy.deepcopy(detector.net)
    for p in net.parameters():  # a loaded detector is frozen for attacks: its copy trains
        p.requires_grad_(True)
    return run_pruning(
        net,
        pruner,
        images,
        None,
        (1, 3, *detector.input_size),
        rates=rates,
        flops_reduction=flops_reduction,
        regularize=regularize,
        finetune=finetune,
        workdir=workdir,
        resume=resume,
        copy_model=False,
        layers=layers,
        loss_fn=DetectorDistillation(detector),
        score=lambda m: detector_ap(detector, held_out, m),
    )
