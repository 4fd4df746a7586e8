"""Demo section: every pruning method at one FLOPs target on the digits CNN."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..engine import TrainConfig, fit, seed_everything
from ..models import build
from ..prune import get_pruner, run_pruning
from ..report import Report, plots
from .settings import DemoContext, DemoSettings

log = logging.getLogger(__name__)


def compare_methods(s: DemoSettings, out: Path, rep: Report) -> torch.nn.Module:
    """Every pruning method at one FLOPs target on the digits CNN (seconds on 2 cores); returns the
    dense digits CNN."""
    from ..data import digits

    seed_everything(s.seed)
    train, val = digits(True), digits(False)
    model = build("digits_cnn")
    fit(model, train, None, TrainConfig(epochs=s.digits_epochs, lr=3e-3, seed=s.seed))
    reg = TrainConfig(epochs=s.methods_reg_epochs, lr=1e-3, seed=s.seed)
    ft = TrainConfig(epochs=s.methods_finetune_epochs, lr=1e-3, seed=s.seed)
    rows, bars = [], {}
    for method, scheme in (
        ("magnitude", "kgs"),
        ("reweighted", "kgs"),
        ("admm", "kgs"),
        ("magnitude", "filter"),
        ("primal-proximal", None),
    ):
        log.info("digits: %s pruning to %.1fx", method, s.methods_target)
        pruner = (
            get_pruner(method, scheme, gm=8, gn=4)
            if scheme == "kgs"
            else get_pruner(method, scheme)
        )
        # RT3D regularises with SGD: with Adam the normalised penalty gradient does little
        method_reg = replace(reg, optimizer="sgd", lr=1e-2) if method == "reweighted" else reg
        res = run_pruning(
            model,
            pruner,
            train,
            val,
            (1, 1, 8, 8),
            flops_reduction=s.methods_target,
            regularize=method_reg if pruner.regularizes else None,
            finetune=ft,
        )
        name = f"{method} / {getattr(pruner, 'structure', pruner.scheme.name)}"
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                res.accuracy_dense,
                res.accuracy_pruned,
                res.accuracy_finetuned,
            )
        )
        bars[name] = res.accuracy_finetuned
    rep.heading(f"Pruning methods at {s.methods_target}x fewer MACs (digits CNN)")
    rep.paragraph(
        f"Regularisation {s.methods_reg_epochs} epochs (methods that have one), hard pruning, then "
        f"{s.methods_finetune_epochs} fine-tuning epochs for every method; one seed. "
        "benchmarks/pruning_accuracy.py gives means over seeds and the Torch-Pruning peer."
    )
    rep.table(
        [
            "method / structure",
            "FLOPs reduction",
            "acc. dense",
            "acc. hard-pruned",
            "acc. fine-tuned",
        ],
        rows,
    )
    plots.method_bars(bars, rows[0][2], out / "methods.png")
    rep.figure("methods.png", "Accuracy after fine-tuning per pruning method (dashed: dense).")
    return model


def section(ctx: DemoContext) -> None:
    ctx.made["digits_model"] = compare_methods(ctx.settings, ctx.out, ctx.report)
