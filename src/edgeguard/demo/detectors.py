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
    """CenterNet pruned with KGS to ``s.detector_target`` x fewer MACs -- units ranked over all
    layers by the output error their removal causes, from input statistics of one epoch on the
    photos -- and fine-tuned for one short distillation epoch with filter-relative Adam steps
    (person AP50 on held-out photos before and after), then compiled;
    a second copy masked to ``s.detector_speed_target`` x (one-shot, no fine-tuning) shows the
    compiler's speed at the benchmark's operating point."""
    from ..compiler import compile_model
    from ..compiler.bench import paired_ms
    from ..data import UnlabeledImages
    from ..data.persons import PersonPhotos, load_persons
    from ..engine import TrainConfig
    from ..models import count_flops
    from ..models.detectors import get_detector
    from ..models.detectors import weights as detector_weights
    from ..prune import detector_ap, detector_layers, get_pruner, prune_detector
    from ..sparsity import prune_model

    rep.heading("Pruning and compiling a real detector: CenterNet (COCO)")
    root = Path(s.persons_root) if s.persons_root else data_root() / "persons"
    if not detector_weights.available():
        rep.paragraph("Skipped: the CenterNet weights are not fetched (`make models`).")
        return
    if not (root / "manifest.csv").is_file():
        rep.paragraph(f"Skipped: the person photographs ({root}) are not on this machine.")
        return
    det = get_detector("centernet")
    train, held = load_persons(root).split(0.3, s.seed)
    train = PersonPhotos(train.photos[: s.detector_photos])
    held = PersonPhotos(held.photos[: s.detector_photos // 2])
    images = UnlabeledImages.from_photos(train, det.input_size)
    # folded batch norms: weight scales span 1e-4..13, so steps relative to each filter's RMS
    cfg = TrainConfig(
        epochs=1, batch_size=4, lr=1e-3, optimizer="adam-relative", seed=s.seed, progress=True
    )
    log.info("detectors: KGS %.2fx on CenterNet, one distillation epoch", s.detector_target)
    pruner = get_pruner("gradual", "kgs", ramp_epochs=1, criterion="output-error")
    res = prune_detector(
        det,
        pruner,
        images,
        held,
        flops_reduction=s.detector_target,
        finetune=cfg,
        regularize=cfg,  # the dense epoch that gathers the layers' input statistics
    )
    shape = (1, 3, *det.input_size)
    layers, _ = detector_layers(det)
    speed = copy.deepcopy(det.net)
    prune_model(
        speed, "kgs", flops_reduction=s.detector_speed_target, input_shape=shape, layers=layers
    )
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
                lambda: det.net(x), lambda c=compiled: c(x), 3 if quick else 10
            )
        if ap is None:
            ap = detector_ap(det, held, model)
        red = count_flops(model, shape).reduction
        rows.append(
            [name, f"{red:.2f}x", round(ap, 3), dense_ms, comp_ms, f"{dense_ms / comp_ms:.2f}x"]
        )
    rep.paragraph(
        f"CenterNet-MobileNetV3 at 512x512, person AP50 on {len(held)} held-out photos "
        f"({held.num_persons} persons): dense {res.accuracy_dense:.3f}; right after hard pruning "
        f"to {s.detector_target:g}x {res.accuracy_pruned:.3f} (kernel groups ranked over all "
        "layers by the output error their removal causes; by weight magnitude at one uniform "
        "rate the AP50 falls to about 0.04, docs/benchmarks.md); after one epoch of label-free "
        f"distillation on {len(train)} photos {res.accuracy_finetuned:.3f}.  Compiled with "
        "edgeguard.compile (each 1x1 expand conv and its depthwise conv run as one kernel; "
        "hard-swish fused); batch 1, "
        f"{torch.get_num_threads()} threads.  docs/benchmarks.md has the full runs."
    )
    rep.table(["model", "MAC reduction", "AP50", "dense ms", "compiled ms", "speedup"], rows)


def section(ctx: DemoContext) -> None:
    detectors_section(ctx.settings, ctx.out, ctx.report, ctx.quick)
