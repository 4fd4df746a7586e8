"""Demo section: an adversarial T-shirt patch against CenterNet on whole photos (HOG on crops
without the fetched weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..report import Report, plots
from ..settings import data_root
from .settings import DemoContext, DemoSettings

log = logging.getLogger(__name__)


def tshirt_section(s: DemoSettings, out: Path, rep: Report) -> None:
    """A short adversarial T-shirt run against CenterNet (COCO-trained, on whole photos: every
    person wears the patch), evaluated on held-out photos against CenterNet and OpenCV's HOG; the
    HOG port on person crops when the CenterNet weights were not fetched."""
    from ..attacks.patch.placement import PATCH_SIZES
    from ..attacks.patch.transforms import EOT
    from ..attacks.patch.workflow import TShirtStudy
    from ..models.detectors import weights as detector_weights

    rep.heading("Adversarial T-shirt: hiding people from a person detector")
    root = Path(s.persons_root) if s.persons_root else data_root() / "persons"
    if not (root / "manifest.csv").is_file():
        rep.paragraph(f"Skipped: the person photographs ({root}) are not on this machine.")
        return
    size = PATCH_SIZES["torso"]  # a print over the whole torso region
    noise = torch.rand(3, *size, generator=torch.Generator().manual_seed(s.seed + 1))
    if detector_weights.available():
        spec, name = "centernet", "CenterNet"
        study = TShirtStudy.open(root, [spec], None, 0.3, s.seed, limit=s.tshirt_photos)
        cfg = study.config(steps=s.tshirt_steps, seed=s.seed, size=size, batch=4, samples=1, tv=1.0)
    else:
        rep.paragraph(
            "The CenterNet weights are not fetched (`make models`): the HOG port on "
            "person crops instead."
        )
        spec, name = "hog", "HOG port"
        study = TShirtStudy.open(
            root, [spec], ["pennfudan", "inria"], 0.3, s.seed, limit=s.tshirt_photos
        )
        cfg = study.config(steps=s.tshirt_steps, seed=s.seed, size=size)
    train = study.attackable([spec])
    te = study.test_set
    what = (
        f"{len(train)} training photos ({train.persons} wearers; every person in a photo wears "
        f"the patch), evaluated on {len(te)} held-out photos ({te.persons} wearers)"
        if study.whole
        else f"{len(train)} persons of {study.split.photos[0]} training photos"
    )
    log.info("t-shirt: %d steps against %s", s.tshirt_steps, name)
    patch = study.train([spec], cfg, log_every=max(1, s.tshirt_steps // 4)).patch
    asr = study.evaluate(
        {"T-shirt patch": patch, "random noise": noise}, [spec, "opencv"], EOT(), samples=2
    )
    asr = {(p, name if d == spec else d): a for (p, d), a in asr.items()}
    plots.save_patch(patch, out / "tshirt_patch.png", print_side=256)
    rep.paragraph(
        f"A patch trained for {s.tshirt_steps} steps against {name} (TPS cloth deformation + EOT) "
        f"on {what}, under new random deformations.  ASR: share of the persons detected without a "
        f"patch that are no longer detected (IoU >= {study.iou}).  A short run: docs/benchmarks.md has "
        "the full one."
    )
    rep.table(
        ["patch", "detector", "persons detected", "samples", "ASR %"],
        [[p, d, a.clean_detected, a.attacked, round(100 * a.rate, 1)] for (p, d), a in asr.items()],
    )
    rep.figure("tshirt_patch.png", "the T-shirt patch")
    path = study.examples(spec, patch, EOT(), out / "tshirt_detections.png", n=4)
    rep.figure(path.name, f"held-out photos without / with the patch ({name}; red: someone hidden)")


def section(ctx: DemoContext) -> None:
    tshirt_section(ctx.settings, ctx.out, ctx.report)
