"""The demo's sizes (:class:`DemoSettings`, :data:`QUICK`) and what its sections share
(:class:`DemoContext`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report import Report


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run (defaults: about 5 minutes on 2 CPU cores)."""

    train_clips: int = 2400
    val_clips: int = 600
    frames: int = 16
    size: int = 32
    width: float = 0.125
    epochs: int = 12
    lr: float = 5e-4
    warmup_epochs: float = 1.0
    finetune_epochs: int = 3
    finetune_lr: float = 2e-4
    flops_reduction: float = 2.5
    seed: int = 0
    # pruning-method comparison on the digits CNN
    methods_target: float = 3.6
    digits_epochs: int = 12
    methods_reg_epochs: int = 10
    methods_finetune_epochs: int = 6
    # explanation section
    explain_samples: int = 40
    concept_images: int = 1500
    concept_epochs: int = 8
    # graph section
    graph_nodes: int = 1000
    graph_epochs: int = 100
    graph_budgets: tuple[float, ...] = (0.02, 0.05, 0.1)
    # T-shirt section (needs the shared persons photos; skipped with the reason when absent)
    persons_root: str = ""  # default: edgeguard.settings.data_root() / "persons"
    tshirt_photos: int = 40
    tshirt_steps: int = 40
    # detector section (CenterNet: the fetched weights and the persons photos)
    detector_photos: int = 48  # unlabeled training photos; half as many held out for AP50
    detector_target: float = 1.5  # of the 80-class graph: person head cut + KGS, distilled
    detector_calibration: int = 8  # whole photos the hard pruning's reconstruction solves on
    detector_speed_target: float = 2.0  # the same person detector, KGS one-shot, for speed


QUICK = DemoSettings(
    train_clips=96,
    val_clips=48,
    epochs=1,
    warmup_epochs=0.0,
    finetune_epochs=1,
    digits_epochs=1,
    methods_reg_epochs=1,
    methods_finetune_epochs=1,
    explain_samples=12,
    concept_images=200,
    concept_epochs=1,
    graph_nodes=300,
    graph_epochs=5,
    graph_budgets=(0.05,),
    tshirt_photos=10,
    tshirt_steps=2,
    detector_photos=4,
    detector_calibration=2,
)


@dataclass
class DemoContext:
    """What one demo run's sections share: its settings, output folder and report, and what earlier
    sections made for later ones (``made``: e.g. the pruned C3D models, the digits CNN)."""

    settings: DemoSettings
    out: Path
    report: Report
    quick: bool
    made: dict[str, Any] = field(default_factory=dict)
