"""Demo section: explain the attacks (promotion/suppression, CAM, network dissection)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..engine import TrainConfig, evaluate, fit, seed_everything
from ..models import build
from ..report import Report
from .settings import DemoContext, DemoSettings

log = logging.getLogger(__name__)


def explain_section(s: DemoSettings, out: Path, rep: Report, model: torch.nn.Module) -> None:
    """Promotion/suppression, CAM overlap and dissection for the demo's attacks."""
    from ..attacks import CW, EAD, FGSM, PGD
    from ..data import SyntheticConcepts, digits
    from ..explain import HEADERS as EXPLAIN_HEADERS
    from ..explain import explain_attacks

    rep.heading("Explaining the attacks: promotion and suppression")
    attacks = {
        "FGSM": FGSM(eps=0.1),
        "PGD-20": PGD(eps=0.1, steps=20),
        "C&W L2": CW(binary_steps=4),
        "EAD": EAD(binary_steps=4),
    }
    x, y = digits(False).tensors
    x, y = x[: s.explain_samples], y[: s.explain_samples]
    log.info("explaining %d attacks on %d digits", len(attacks), len(x))
    study = explain_attacks(
        model.eval(), x, y, attacks, out_dir=out / "explain_digits", progress=False
    )
    rep.paragraph(
        "For each successful perturbation x -> x_adv (true class y, adversarial class t), the logit "
        "margin gain splits exactly into promotion of t (delta z_t) and suppression of y "
        "(-delta z_y); through the GAP + linear head each term splits exactly over the 128 units of "
        "the last conv layer.  A perturbation is suppression-dominated when suppression is at least "
        "twice promotion (share >= 2/3), promotion-dominated when at most half of it (share <= 1/3).  "
        "Pixel maps: integrated gradients from x to x_adv; overlaps are with Grad-CAM (top 10% "
        "of pixels; a random map scores about 0.10).  Failed attacks are excluded and counted."
    )
    rep.table(list(EXPLAIN_HEADERS), study.rows())
    for caption, path in list(study.figures.items())[:3]:
        rep.figure(f"explain_digits/{path.name}", caption)

    log.info("training a CNN on %d synthetic concept images for dissection", s.concept_images)
    seed_everything(s.seed)
    train = SyntheticConcepts(s.concept_images, seed=2 * s.seed)
    held = SyntheticConcepts(max(100, s.concept_images // 4), seed=2 * s.seed + 1)
    cnn = build("concept_cnn")
    fit(
        cnn,
        train.classification(),
        None,
        TrainConfig(epochs=s.concept_epochs, lr=3e-3, seed=s.seed, progress=False),
    )
    acc = evaluate(cnn, held.classification())["accuracy"]
    xs, ys = held.images[: s.explain_samples], held.targets[: s.explain_samples]
    study = explain_attacks(
        cnn.eval(),
        xs,
        ys,
        {"FGSM": FGSM(eps=0.03), "PGD-20": PGD(eps=0.03, steps=20)},
        out_dir=out / "explain_concepts",
        concepts=held,
        progress=False,
    )
    d = study.dissection
    rep.paragraph(
        f"A small VGG (concept_cnn) trained to name the shape in {s.concept_images} synthetic "
        f"images (held-out accuracy {100 * acc:.1f}%), attacked at L-inf eps 0.03 and dissected at "
        f"{d.layer} on {len(held)} held-out concept images (4 shapes, 4 colours, 3 textures): "
        f"{int(d.is_detector.sum())} of {len(d.thresholds)} units detect a concept (IoU > 0.04) "
        f"{d.detector_counts()}.  Last column: Spearman correlation between a unit's attack "
        "sensitivity and its best IoU."
    )
    rep.table(list(EXPLAIN_HEADERS), study.rows())
    for caption, path in study.figures.items():
        if "dissection" in path.name or "sensitivity" in path.name or "maps_pgd" in path.name:
            rep.figure(f"explain_concepts/{path.name}", caption)


def section(ctx: DemoContext) -> None:
    from ..explain.analysis import NothingToExplain

    try:
        explain_section(ctx.settings, ctx.out, ctx.report, ctx.made["digits_model"])
    except NothingToExplain as err:  # quick runs train too briefly for every attack to succeed
        ctx.report.paragraph(f"Explanation section skipped: {err}")
