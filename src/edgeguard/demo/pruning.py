"""Demo section: train a small C3D on synthetic moving shapes, prune it with KGS and with filter
pruning to the same FLOPs, fine-tune both; tables and plots."""

from __future__ import annotations

import logging
import time

import torch
from torch.utils.data import Dataset, TensorDataset

from ..data import SyntheticMovingShapes
from ..engine import TrainConfig, evaluate, fit, seed_everything
from ..masks import mask_of
from ..modelfile import save_model
from ..models import build, count_flops
from ..prune import get_pruner, run_pruning
from ..report import plots
from ..sparsity.summary import HEADERS, layer_table
from .settings import DemoContext

log = logging.getLogger(__name__)


def materialise(ds: Dataset) -> TensorDataset:
    """Render a generated dataset once into memory so that epochs do not re-render clips."""
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def section(ctx: DemoContext) -> None:
    s, out, rep = ctx.settings, ctx.out, ctx.report
    seed_everything(s.seed)
    log.info("rendering %d + %d synthetic clips", s.train_clips, s.val_clips)
    gen_train = SyntheticMovingShapes(s.train_clips, seed=2 * s.seed, frames=s.frames, size=s.size)
    train = materialise(gen_train)
    val = materialise(
        SyntheticMovingShapes(s.val_clips, seed=2 * s.seed + 1, frames=s.frames, size=s.size)
    )
    shape = (1, 3, s.frames, s.size, s.size)

    model = build(
        "c3d",
        num_classes=len(gen_train.classes),
        width=s.width,
        clip_size=[s.frames, s.size, s.size],
        dropout=0.2,
        batch_norm=True,
    )
    log.info("training a C3D (width %.3g) for %d epochs", s.width, s.epochs)
    cfg = TrainConfig(
        epochs=s.epochs, lr=s.lr, batch_size=32, seed=s.seed, warmup_epochs=s.warmup_epochs
    )
    history = fit(model, train, val, cfg, checkpoint_dir=out / "dense")
    dense_acc = evaluate(model, val)["accuracy"]
    save_model(
        model, out / "dense.safetensors", extra={"input_shape": list(shape), "accuracy": dense_acc}
    )

    outcomes = {}
    ft = TrainConfig(epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=32, seed=s.seed)
    for scheme in ("kgs", "filter"):
        log.info(
            "pruning with %s to %.1fx fewer MACs, then %d fine-tuning epochs",
            scheme,
            s.flops_reduction,
            s.finetune_epochs,
        )
        res = run_pruning(
            model,
            get_pruner("magnitude", scheme),
            train,
            val,
            shape,
            flops_reduction=s.flops_reduction,
            finetune=ft,
            workdir=out / scheme,
        )
        save_model(
            res.model,
            out / f"{scheme}.safetensors",
            res.scheme,
            res.rates,
            extra={"input_shape": list(shape), "accuracy": res.accuracy_finetuned},
        )
        outcomes[scheme] = res

    dense_flops = count_flops(model, shape)
    rep.paragraph(
        f"A C3D (width {s.width}, {dense_flops.dense_macs / 1e6:.1f} MMACs per {s.frames}x{s.size}x{s.size} "
        f"clip, BatchNorm) trained on {s.train_clips} synthetic moving-shape clips "
        f"({len(gen_train.classes)} classes: shape x direction) and pruned one-shot by magnitude to "
        f"{s.flops_reduction}x fewer MACs with two structures, then fine-tuned for {s.finetune_epochs} "
        f"epochs. Total run time {time.perf_counter() - ctx.made['t_start']:.0f} s."
    )
    rep.heading("Structured pruning: KGS vs filter pruning at the same FLOPs")
    rows = [("dense", "-", dense_flops.dense_macs, 1.0, dense_acc, "-", dense_acc)]
    for name, res in outcomes.items():
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                res.flops.kept_macs,
                1 - res.flops.kept_macs / res.flops.dense_macs,
                res.accuracy_dense,
                res.accuracy_pruned,
                res.accuracy_finetuned,
            )
        )
    rep.table(
        [
            "model",
            "FLOPs reduction",
            "kept MACs",
            "MACs removed",
            "acc. before",
            "acc. pruned",
            "acc. fine-tuned",
        ],
        rows,
    )
    plots.training_curves(
        {"dense": history.epochs, **{f"{k} fine-tune": v.history for k, v in outcomes.items()}},
        out / "training.png",
    )
    rep.figure("training.png", "Training and validation accuracy per epoch.")
    plots.accuracy_vs_flops(
        {
            "dense": (1.0, dense_acc),
            **{k: (v.flops.reduction, v.accuracy_finetuned) for k, v in outcomes.items()},
        },
        out / "accuracy_vs_flops.png",
    )
    rep.figure("accuracy_vs_flops.png", "Accuracy after fine-tuning against the FLOPs reduction.")
    layers = [layer.name for layer in dense_flops.layers]
    plots.layer_density(
        layers,
        {k: [v.flops[n].density for n in layers] for k, v in outcomes.items()},
        out / "layer_density.png",
    )
    rep.figure(
        "layer_density.png",
        "Share of weights kept per layer (one uniform rate per prunable layer).",
    )
    kgs = outcomes["kgs"].model
    plots.mask_image(
        mask_of(kgs.conv3a),
        "KGS mask of conv3a as W[F, C*k] (8x4 kernel groups)",
        out / "kgs_mask_conv3a.png",
    )
    rep.figure(
        "kgs_mask_conv3a.png", "KGS keeps the same kernel locations in every kernel of a group."
    )
    for name, res in outcomes.items():
        rep.heading(f"Per-layer table: {name}", level=3)
        rep.table(HEADERS, layer_table(res.model, shape, dict.fromkeys(res.rates, name)))
    ctx.made.update(outcomes=outcomes, val=val, shape=shape)
