"""``edgeguard explain``: explain attacks on a saved model."""

from __future__ import annotations

from ..errors import UsageError
from . import names
from .common import (
    FRACTION,
    attack_arguments,
    build_attack,
    int_in,
    model_and_held_out,
    start_run,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain", help="explain attacks on a saved model: promotion/suppression, CAM, dissection"
    )
    attack_arguments(
        p,
        "fgsm,pgd,cw,ead",
        f"one attack or a comma-separated list: {names.attacks()}",
        100,
        "runs/explain",
    )
    p.add_argument("--layer", help="layer of the unit-level PSE (default: the final linear layer)")
    p.add_argument(
        "--cam-layer",
        help="layer of Grad-CAM, sensitivity and dissection (default: the last feature map)",
    )
    p.add_argument("--concepts", help="a Broden folder, or 'synthetic' (RGB models): dissect")
    p.add_argument("--concept-images", type=int_in(1), default=500, help="concept images to use")
    p.add_argument("--fraction", type=FRACTION, default=0.1, help="top-k share of pixels compared")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import Broden, SyntheticConcepts
    from ..engine.rundir import finish_run
    from ..explain import HEADERS, explain_attacks
    from ..report import Report

    model, x, y, _ = model_and_held_out(args)
    names = [a.strip() for a in args.attack.split(",") if a.strip()]
    attacks = {name: build_attack(name, args, strict=len(names) == 1)[0] for name in names}
    concepts = None
    if args.concepts == "synthetic":
        if x.shape[1] != 3:
            raise UsageError("--concepts synthetic needs a model on RGB images (3 channels)")
        concepts = SyntheticConcepts(args.concept_images, size=x.shape[-1], seed=12345)
    elif args.concepts:
        concepts = Broden(args.concepts, limit=args.concept_images)
    out = start_run(args, "explain", (args.model,))
    study = explain_attacks(
        model,
        x,
        y,
        attacks,
        out_dir=out,
        concepts=concepts,
        layer=args.layer,
        cam_layer=args.cam_layer,
        fraction=args.fraction,
    )
    e0 = study.explanations[0]
    print(
        f"unit PSE at {e0.unit.layer!r} ({e0.unit.method}); Grad-CAM and sensitivity at "
        f"{e0.cam_layer!r}; top-{100 * args.fraction:g}% pixel overlaps"
    )
    print(f"{e0.misclassified} of {len(x)} inputs misclassified before any attack (skipped)")
    print(study.table())
    rep = Report(f"edgeguard explain: {args.model}")
    rep.table(list(HEADERS), study.rows())
    if study.dissection is not None:
        d = study.dissection
        print(
            f"dissection of {d.layer!r}: {int(d.is_detector.sum())} of {len(d.thresholds)} units "
            f"are detectors {d.detector_counts()}"
        )
        rep.paragraph(
            f"Dissection of {d.layer}: {int(d.is_detector.sum())} detector units "
            f"{d.detector_counts()}."
        )
    for caption, path in study.figures.items():
        rep.figure(path.name, caption)
    print(f"report: {rep.save(out / 'report.html')}")
    finish_run(out)
    return 0
