"""Adversarial T-shirt benchmark (issue 8): patches trained on the training photos of
../shared/data/persons, ASR on held-out persons under held-out random transformations.

Patches: TPS + EOT against the HOG port (the paper's method), rigid EOT against the HOG port (Thys et
al.), zeroth-order against OpenCV's own HOG (black box), min-max and average ensembles of the HOG port
and the CNN detector, and a random-noise patch.  Detectors: the HOG port, OpenCV's HOG, the CNN.
Also the CNN detector's AP on the held-out photos.

    .venv/bin/python benchmarks/tshirt.py --steps 200 --zo-steps 80
    .venv/bin/python benchmarks/tshirt.py --patches runs/bench/tshirt --tps-sweep 0 0.08 0.16 0.24
        (no training: evaluates a run's saved patches, also under stronger or weaker cloth bending)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import date
from pathlib import Path

import torch

from edgeguard.attacks.patch import (
    ASR,
    AdversarialTShirt,
    TShirtConfig,
    ZOConfig,
    ZOTShirt,
    detected,
)
from edgeguard.attacks.patch.placement import PATCH_SIZES, SHAPES
from edgeguard.attacks.patch.study import (
    detection_examples,
    detector_checks,
    evaluate_patches,
    load_crops,
    load_patch,
    only_detected,
    training_view,
)
from edgeguard.attacks.patch.transforms import EOT
from edgeguard.modelfile import save_patch_file
from edgeguard.models.detectors import HOGPersonDetector
from edgeguard.models.detectors.opencv import OpenCVHOGBlackBox
from edgeguard.models.detectors.train import evaluate_ap, load_cnn_detector
from edgeguard.report.plots import save_patch
from edgeguard.settings import data_root

DATA = data_root() / "persons"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--zo-steps", type=int, default=80)
    ap.add_argument("--samples", type=int, default=8, help="held-out draws per person")
    ap.add_argument("--sources", default="pennfudan,inria")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/tshirt")
    ap.add_argument("--skip", default="", help="comma-separated variants to skip")
    ap.add_argument(
        "--shape",
        default="torso",
        choices=SHAPES,
        help="patch: the whole torso region (a shirt print) or the largest square in it",
    )
    ap.add_argument(
        "--patches",
        default=None,
        help="evaluate the patch_*.safetensors (or .png) of an earlier run, no training",
    )
    ap.add_argument(
        "--train-tps",
        type=float,
        default=EOT.tps,
        help="TPS strength (control-point std, half patch heights) the TPS-trained patches "
        "see; the held-out evaluation keeps the default unless --tps-sweep",
    )
    ap.add_argument(
        "--tps-sweep",
        type=float,
        nargs="*",
        default=[],
        help="also evaluate under EOT with these TPS strengths (default EOT is 0.08)",
    )
    ap.add_argument(
        "--topk",
        type=int,
        default=TShirtConfig.topk,
        help="the loss averages this many best windows overlapping the person",
    )
    ap.add_argument(
        "--kappa",
        type=float,
        default=TShirtConfig.kappa,
        help="margin below the threshold past which a window stops pulling",
    )
    ap.add_argument(
        "--folds",
        type=int,
        default=0,
        help="k-fold cross-validation over the photos (k >= 2): every person is held out "
        "once, ASR pooled over the folds (default: one 70/30 split)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.folds == 1 or args.folds < 0:
        ap.error("--folds must be 0 (one split) or >= 2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    hog, cnn = HOGPersonDetector(), load_cnn_detector()
    folds = [(i, args.folds) for i in range(args.folds)] if args.folds else [None]
    pooled: dict[tuple[str, str, str], list[ASR]] = {}
    result = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "args": vars(args),
    }
    for fold in folds:
        split = load_crops(
            DATA, args.sources.split(","), 0.3, args.seed, scale=1.0, shape=args.shape, fold=fold
        )
        sub = out / f"fold{fold[0]}" if fold else out
        patches_dir = Path(args.patches) / sub.name if fold and args.patches else args.patches
        if fold:
            print(f"== fold {fold[0] + 1} of {fold[1]}", flush=True)
        res = run_split(args, split, sub, patches_dir, hog, cnn, pooled)
        if fold:
            result.setdefault("folds", []).append(res)
        else:
            result |= res
    if args.folds:  # each person was attacked by the patch of the fold that held it out
        result["rows"] = []
        for (eot_name, p, d), parts in pooled.items():
            a = ASR.pooled(parts)
            result["rows"].append(row(eot_name, p, d, a))
            print("pooled", json.dumps(result["rows"][-1]), flush=True)
    result["total_seconds"] = time.perf_counter() - t_start
    (out / "tshirt.json").write_text(json.dumps(result, indent=1))
    print(f"results: {out / 'tshirt.json'}")


def row(eot_name: str, patch: str, detector: str, a: ASR) -> dict:
    return {
        "transformations": eot_name,
        "patch": patch,
        "detector": detector,
        "persons": a.clean_detected,
        "samples": a.attacked,
        "hidden": a.hidden,
        "ASR": round(a.rate, 4),
        "ASR_ci95": [round(v, 4) for v in a.interval()],
    }


def run_split(args, split, out: Path, patches_dir, hog, cnn, pooled) -> dict:
    """Train (or load) the patches on ``split.train``, evaluate them on ``split.test``."""
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    size = PATCH_SIZES[args.shape]
    cnn_ap = evaluate_ap(cnn, split.held_out_photos)
    print(f"CNN detector AP@0.5 on the held-out photos: {cnn_ap:.3f}", flush=True)

    def seen(d):
        return lambda im, bx: detected(d, im, bx)

    train_hog = only_detected(seen(training_view(hog)), split.train)
    train_both = only_detected(seen(cnn), train_hog)
    patches: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}

    def run(name, fn):
        if name in skip:
            return
        stem = f"patch_{name.replace(' ', '_')}"
        if patches_dir:  # reuse: exact from safetensors, within 1/510 from a print PNG
            found = [
                f
                for f in (Path(patches_dir) / (stem + e) for e in (".safetensors", ".png"))
                if f.is_file()
            ]
            if found:
                patches[name] = load_patch(found[0], size)
                print(f"{name}: loaded {found[0]}", flush=True)
            else:
                print(
                    f"{name}: no {stem}.safetensors or .png in {patches_dir}, left out", flush=True
                )
            return
        t0 = time.perf_counter()
        patches[name] = fn()
        seconds[name] = time.perf_counter() - t0
        save_patch(patches[name], out / f"{stem}.png", print_side=256)
        save_patch_file(patches[name], out / f"{stem}.safetensors")
        print(f"{name}: trained in {seconds[name]:.0f} s", flush=True)

    cfg = {
        "steps": args.steps,
        "seed": args.seed,
        "size": size,
        "eot": EOT(tps=args.train_tps),
        "topk": args.topk,
        "kappa": args.kappa,
    }
    run(
        "TPS (HOG)",
        lambda: AdversarialTShirt(training_view(hog), TShirtConfig(**cfg)).train(train_hog).patch,
    )
    run(
        "rigid (HOG)",
        lambda: (
            AdversarialTShirt(training_view(hog), TShirtConfig(**(cfg | {"eot": EOT.rigid()})))
            .train(train_hog)
            .patch
        ),
    )
    box = OpenCVHOGBlackBox()
    run(
        "ZO (OpenCV)",
        lambda: (
            ZOTShirt(box.scores, ZOConfig(steps=args.zo_steps, seed=args.seed, size=size))
            .train(only_detected(box.detected, split.train))
            .patch
        ),
    )
    for weighting in ("minmax", "average"):
        run(
            f"ensemble {weighting}",
            lambda w=weighting: (
                AdversarialTShirt([training_view(hog), cnn], TShirtConfig(**cfg, weighting=w))
                .train(train_both)
                .patch
            ),
        )
    patches["random noise"] = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))

    checks = detector_checks(["opencv"]) | {"hog": seen(hog), "cnn": seen(cnn)}
    rows = []
    settings = [("TPS+EOT", EOT()), ("rigid EOT", EOT.rigid())]
    settings += [(f"EOT, TPS {t:g}", EOT(tps=t)) for t in args.tps_sweep]
    for eot_name, eot in settings:
        asr = evaluate_patches(patches, checks, split.test, eot, args.samples)
        for (p, d), a in asr.items():
            rows.append(row(eot_name, p, d, a))
            pooled.setdefault((eot_name, p, d), []).append(a)
            print(json.dumps(rows[-1]), flush=True)
    if "TPS (HOG)" in patches:
        detection_examples(
            hog,
            only_detected(seen(hog), split.test),
            patches["TPS (HOG)"],
            EOT(),
            out / "detections_hog.png",
        )
    return {
        "cnn_ap50": cnn_ap,
        "train_persons": {"hog": len(train_hog), "hog+cnn": len(train_both)},
        "held_out_persons": len(split.test),
        "skipped": split.skipped,
        "train_seconds": seconds,
        "rows": rows,
    }


if __name__ == "__main__":
    main()
