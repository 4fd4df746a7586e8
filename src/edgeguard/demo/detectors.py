"""Demo section: prune the COCO-trained CenterNet, fine-tune it by distillation from the dense
detector on unlabeled photos, and compile it (needs the fetched detector weights and the shared
persons photos; skipped with the reason otherwise)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from ..report import Report
from ..settings import data_root
from .settings import DemoContext, DemoSettings

log = logging.getLogger(__name__)


def detectors_section(s: DemoSettings, out: Path, rep: Report, quick: bool) -> None:
    """CenterNet made a person detector (its class head cut to the person class) and pruned with
    KGS to ``s.detector_target`` x fewer MACs than the 80-class graph -- the kept weights
    re-solved on ``s.detector_calibration`` whole photos, the kept kernel groups chosen by OBS
    saliency -- then fine-tuned for one short distillation epoch with filter-relative Adam steps
    (person AP50 on held-out photos before and after) and compiled; a second copy masked to
    ``s.detector_speed_target`` x (one-shot, no fine-tuning) shows the compiler's speed at the
    benchmark's operating point.  Dense timings are the 80-class graph's."""
    from ..compiler import compile_model
    from ..compiler.bench import paired_ms
    from ..data import UnlabeledImages
    from ..data.persons import PersonPhotos, load_persons
    from ..engine import TrainConfig
    from ..models import count_flops
    from ..models.detectors import get_detector
    from ..models.detectors import weights as detector_weights
    from ..prune import cut_classes, detector_ap, detector_layers, get_pruner, prune_detector
    from ..sparsity import prune_model

    rep.heading("Pruning and compiling a real detector: CenterNet (COCO)")
    root = Path(s.persons_root) if s.persons_root else data_root() / "persons"
    if not detector_weights.available():
        rep.paragraph("Skipped: the CenterNet weights are not fetched (`make models`).")
        return
    if not (root / "manifest.csv").is_file():
        rep.paragraph(f"Skipped: the person photographs ({root}) are not on this machine.")
        return
    full = get_detector("centernet")
    det, rest = cut_classes(full, [0], s.detector_target)
    train, held = load_persons(root).split(0.3, s.seed)
    train = PersonPhotos(train.photos[: s.detector_photos])
    held = PersonPhotos(held.photos[: s.detector_photos // 2])
    images = UnlabeledImages.from_photos(train, det.input_size)
    # folded batch norms: weight scales span 1e-4..13, so steps relative to each filter's RMS
    cfg = TrainConfig(
        epochs=1, batch_size=4, lr=1e-3, optimizer="adam-relative", seed=s.seed, progress=True
    )
    log.info(
        "detectors: CenterNet as a person detector, KGS %.2fx, reconstruction on %d photos, one "
        "distillation epoch",
        s.detector_target,
        s.detector_calibration,
    )
    res = prune_detector(
        det,
        get_pruner("magnitude", "kgs"),
        images,
        held,
        flops_reduction=rest,
        finetune=cfg,
        reconstruct=s.detector_calibration,
        reselect=True,
        classes=[0],
    )
    shape = (1, 3, *det.input_size)
    full_macs = count_flops(full.net, shape).dense_macs
    layers, _ = detector_layers(det)
    speed = copy.deepcopy(det.net)
    speed_rest = s.detector_speed_target * rest / s.detector_target  # the same cut's share
    prune_model(speed, "kgs", flops_reduction=speed_rest, input_shape=shape, layers=layers)
    backend = "torch" if quick else "auto"  # quick (smoke-test) runs skip the C++ builds
    x = torch.rand(shape) * 255  # the graph takes raw 0-255 pixels
    rows = []
    for name, model, ap in (
        (f"KGS {s.detector_target:g}x + distillation", res.model, res.accuracy_finetuned),
        (f"KGS {s.detector_speed_target:g}x, one-shot (speed only)", speed, None),
    ):
        model.eval()
        compiled = compile_model(model, backend, input_shape=shape)
        with torch.no_grad():
            dense_ms, comp_ms = paired_ms(
                lambda: full.net(x), lambda c=compiled: c(x), 3 if quick else 10
            )
        if ap is None:
            ap = detector_ap(det, held, model)
        red = full_macs / count_flops(model, shape).kept_macs
        rows.append(
            [name, f"{red:.2f}x", round(ap, 3), dense_ms, comp_ms, f"{dense_ms / comp_ms:.2f}x"]
        )
    rep.paragraph(
        f"CenterNet-MobileNetV3 at 512x512 as a person detector (its heatmap conv cut from 80 "
        f"classes to the person class: {1 - rest / s.detector_target:.1%} of the MACs, the person "
        f"outputs unchanged), person AP50 on {len(held)} held-out photos ({held.num_persons} "
        f"persons): dense {res.accuracy_dense:.3f}; right after KGS pruning to "
        f"{s.detector_target:g}x fewer MACs than the 80-class graph {res.accuracy_pruned:.3f} (the "
        f"kept weights re-solved layer by layer on {s.detector_calibration} photos, the kept "
        f"kernel groups chosen by OBS saliency); after one epoch of label-free distillation on "
        f"{len(train)} photos {res.accuracy_finetuned:.3f}.  Compiled with edgeguard.compile "
        "(each 1x1 expand conv and its depthwise conv run as one kernel; hard-swish fused); "
        f"batch 1, {torch.get_num_threads()} threads, against the dense 80-class graph.  "
        "docs/benchmarks.md has the full runs."
    )
    rep.table(["model", "MAC reduction", "AP50", "dense ms", "compiled ms", "speedup"], rows)


def section(ctx: DemoContext) -> None:
    detectors_section(ctx.settings, ctx.out, ctx.report, ctx.quick)
