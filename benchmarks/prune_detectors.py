"""Pruned COCO person detectors fine-tuned by distillation without labels: person AP50 on the
held-out photos of ../shared/data/persons (split 0.3 by source, seed 0; the T-shirt protocol) for the
dense detector, right after hard pruning and after distillation on the training photos (unlabeled,
augmented), per scheme x method at a MAC reduction; seconds per fine-tuning step; optionally
physical channel pruning (edgeguard's ``prune_channels`` and Torch-Pruning, L2 magnitude, uniform
ratio) with the same distillation budget.
MACs are counted at the detector's input size (masked weights count as removed).

    .venv/bin/python benchmarks/prune_detectors.py --detector centernet --target 2 \\
        --jobs kgs:magnitude --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from edgeguard.cli.common import kv
from edgeguard.data import UnlabeledImages
from edgeguard.data.persons import load_persons
from edgeguard.engine import TrainConfig, fit, seed_everything
from edgeguard.engine.checkpoint import load_checkpoint
from edgeguard.models import count_flops
from edgeguard.models.detectors import get_detector
from edgeguard.prune import (
    DetectorDistillation,
    cut_classes,
    detector_ap,
    detector_layers,
    get_pruner,
    head_convs,
    prune_detector,
)
from edgeguard.prune.importance import InputStatistics, output_error_masks
from edgeguard.prune.reconstruct import reconstruct
from edgeguard.prune.sensitivity import allocate_rates, layer_sensitivity
from edgeguard.settings import data_root
from edgeguard.sparsity import attach_masks, get_masks, get_scheme, prune_channels, prune_model
from pruning_accuracy import torch_pruning_channels


def per_step(seconds: float, cfg: TrainConfig, images) -> float:
    """Seconds per fine-tuning step of ``cfg`` over ``images``."""
    return round(seconds / (cfg.epochs * -(-len(images) // cfg.batch_size)), 2)


def ap_curve(det, held_out, every: int, curve: list):
    """A fine-tuning callback: AP50 on the held-out photos every ``every`` epochs."""

    def cb(epoch, model, metrics):
        if (epoch + 1) % every == 0:
            curve.append((epoch + 1, round(detector_ap(det, held_out, model), 4)))
            print(f"epoch {epoch + 1}: AP50 {curve[-1][1]}", flush=True)

    return cb


def channel_job(
    det,
    job: str,
    target: float,
    images,
    held_out,
    cfg: TrainConfig,
    every: int,
    loss: dict | None = None,
):
    """Physical channel pruning of the detector's graph to ``target`` x fewer MACs (counted on the
    shrunk graph; the heads keep their filters), then the same distillation fine-tuning.
    ``job``: ``"torch-pruning"`` (Torch-Pruning's L2 ratio, found by bisection) or
    ``"channel:l2"`` (edgeguard's ``prune_channels``, the same criterion and rule).  ``loss``:
    options of the distillation loss (``DetectorDistillation``'s box_weight, focal, balance,
    box_loss)."""
    shape = (1, 3, *det.input_size)
    dense = count_flops(det.net, shape).dense_macs
    # only the heads stay whole (their outputs keep their channels); the stem and the depthwise
    # convs are pruned with their neighbours (ignoring those too caps Torch-Pruning near 1.3x)
    heads = head_convs(det)
    trainable = copy.deepcopy(det.net)
    for p in trainable.parameters():  # Torch-Pruning leaves frozen parameters (attack mode) whole
        p.requires_grad_(True)
    if job == "torch-pruning":

        def ignored(net):
            mods = dict(net.named_modules())
            return [mods[n] for n in heads]

        net, ratio = torch_pruning_channels(trainable, shape, target, ignored)
        name = "torch-pruning:channel"
    else:
        res = prune_channels(trainable, shape, target, ignored=heads)
        net, ratio, name = res.model, res.rate, "edgeguard:channel-l2"
        net.requires_grad_(True)
    kept = count_flops(net, shape).dense_macs
    ap_pruned = detector_ap(det, held_out, net)
    t0 = time.perf_counter()
    curve = []
    hist = fit(
        net,
        images,
        None,
        cfg,
        loss_fn=DetectorDistillation(det, **(loss or {})),
        callbacks=[ap_curve(det, held_out, every, curve)],
    )
    seconds = time.perf_counter() - t0
    return {
        "job": name,
        "reduction": round(dense / kept, 3),
        "ratio": round(ratio, 4),
        "ap_pruned": round(ap_pruned, 4),
        "ap_finetuned": round(detector_ap(det, held_out, net), 4),
        "seconds_per_step": per_step(seconds, cfg, images),
        "train_loss": [round(e["train_loss"], 4) for e in hist.epochs],
        "ap_curve": curve,
    }


def one_shot_job(
    det,
    scheme: str,
    target: float,
    train,
    held_out,
    calibration: int = 16,
    damp: float = 0.01,
    reselect: bool = False,
) -> dict:
    """Hard-pruned AP50 (no fine-tuning) at ``target`` x fewer MACs: one uniform rate with the
    smallest unit norms removed (``prune_model``) against units ranked over all layers by output
    error, from input statistics of ``calibration`` training photos (``prune.importance``); each
    with its kept weights as they were and re-solved by layer-wise reconstruction on the same
    photos (``prune.reconstruct``); with ``reselect`` also the uniform rate's units re-chosen by
    OBS saliency during the reconstruction."""
    layers, _ = detector_layers(det)
    shape = (1, 3, *det.input_size)
    sch = get_scheme(scheme)
    inputs = [det.prepare(p.image[None].float() / 255) for p in list(train)[:calibration]]
    uniform = copy.deepcopy(det.net)
    res = prune_model(uniform, sch, flops_reduction=target, input_shape=shape, layers=layers)
    ranked = copy.deepcopy(det.net).train()
    mods = dict(ranked.named_modules())
    stats = InputStatistics({n: mods[n] for n in layers})
    with torch.no_grad():
        for args in inputs:
            ranked(*args)
    stats.remove()
    flops = count_flops(ranked, shape)
    masks = output_error_masks(
        {n: mods[n] for n in layers}, sch, stats, flops, flops.dense_macs * (1 - 1 / target)
    )
    row = {"job": f"one-shot:{scheme}", "reduction": round(res.flops.reduction, 3)}
    convs = [n for n, m in det.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for label, chosen in (("uniform_magnitude", get_masks(uniform)), ("output_error", masks)):
        net = copy.deepcopy(det.net)
        attach_masks(net.eval(), chosen)
        row[f"ap_{label}"] = round(detector_ap(det, held_out, net), 4)
        # re-solved: the pruned layers only, then every conv (the unpruned ones refitted)
        for suffix, refit in (("reconstructed", ()), ("reconstructed_all", convs)):
            net = copy.deepcopy(det.net)
            t0 = time.perf_counter()
            errors = reconstruct(net, chosen, inputs, damp=damp, refit=refit)
            row[f"ap_{label}_{suffix}"] = round(detector_ap(det, held_out, net), 4)
            row[f"s_{label}_{suffix}"] = round(time.perf_counter() - t0, 1)
            row[f"output_error_{label}_{suffix}"] = {
                n: [round(a, 4), round(b, 4)] for n, (a, b) in errors.items()
            }
            brief = {k: v for k, v in row.items() if not k.startswith("output_error_")}
            print(json.dumps(brief), flush=True)
    if reselect:
        net = copy.deepcopy(det.net)
        t0 = time.perf_counter()
        reconstruct(net, get_masks(uniform), inputs, damp=damp, select=sch)
        row["ap_uniform_obs_reconstructed"] = round(detector_ap(det, held_out, net), 4)
        row["s_uniform_obs_reconstructed"] = round(time.perf_counter() - t0, 1)
        row["reduction_obs"] = round(count_flops(det.net, shape, masks=get_masks(net)).reduction, 3)
    row["reduction_ranked"] = round(count_flops(det.net, shape, masks=masks).reduction, 3)
    row["rates_output_error"] = {
        n: round(float((~sch.units_of_mask(m)).float().mean()), 3) for n, m in masks.items()
    }
    return row


def start_state(path: str | None) -> dict | None:
    """The graph of a finished job's fine-tuning checkpoint (``WORKDIR/.../finetune/last.pt``),
    its masks applied, to prune further (``--start``)."""
    if path is None:
        return None
    state = load_checkpoint(path)
    model = dict(state["model"])
    if isinstance(state.get("ema"), dict):  # the run's result is its weight average
        model.update(state["ema"]["avg"])
    for name, mask in state.get("masks", {}).items():
        model[f"{name}.weight"] = model[f"{name}.weight"] * mask.to(model[f"{name}.weight"].dtype)
    return model


def sensitivity_profile(det, scheme: str, images, target: float, max_rate: float, out: Path):
    """Per-layer rates for ``target`` x fewer MACs (of ``det``'s graph) from output-level
    sensitivity (``prune.sensitivity``): each pruned layer alone at rates 0.2-0.8, its units
    re-chosen and re-solved on 16 training photos, scored by the distillation loss against the
    dense graph on 8 others (whole photos); written to ``out`` (reusable with ``--rates``)."""
    layers, _ = detector_layers(det)
    plain = images.plain()
    inputs = det.prepare(torch.stack([plain[i][0] for i in range(0, len(plain), 16)]))
    calibration = [det.prepare(plain[i][0][None]) for i in range(3, len(plain), 8)]
    with torch.no_grad():
        teacher = det.net(*inputs)
    table = layer_sensitivity(
        det.net,
        scheme,
        layers,
        lambda net: det.distillation_loss(net(*inputs), teacher),
        calibration=calibration,
    )
    flops = count_flops(det.net, (1, 3, *det.input_size))
    rates = allocate_rates(
        table,
        {n: flops[n].dense_macs for n in layers},
        flops.dense_macs * (1 - 1 / target),
        max_rate=max_rate,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rates, indent=1))
    (out.parent / f"{out.stem}_table.json").write_text(json.dumps(table, indent=1))
    print(f"# sensitivity rates written to {out}", flush=True)
    return rates


def edgeguard_job(
    det,
    job: str,
    target: float,
    images,
    held_out,
    cfg,
    reg,
    workdir,
    every,
    feature_weight,
    options,
    classes,
    reconstruct=0,
    reselect=False,
    resume=False,
    feature_at="pruned",
    start=None,
    loss=None,
    rates=None,
) -> dict:
    scheme, method = job.split(":")
    t0 = time.perf_counter()
    curve = []
    out = prune_detector(
        det,
        get_pruner(method, scheme, **options),
        images,
        held_out,
        flops_reduction=None if rates else target,
        rates=rates,
        finetune=cfg,
        regularize=reg,
        workdir=workdir,
        resume=resume,
        callbacks=[ap_curve(det, held_out, every, curve)],
        feature_weight=feature_weight,
        classes=classes,
        reconstruct=reconstruct,
        reselect=reselect,
        feature_at=feature_at,
        start=start,
        **(loss or {}),
    )
    seconds = sum(e["seconds"] for e in out.history)
    return {
        "job": job,
        "options": options,
        "rates": {n: round(r, 3) for n, r in out.rates.items()},
        "reduction": round(out.flops.reduction, 3),
        "ap_dense": round(out.accuracy_dense, 4),
        "ap_pruned": round(out.accuracy_pruned, 4),
        "ap_finetuned": round(out.accuracy_finetuned, 4),
        "seconds_per_step": per_step(seconds, cfg, images),
        "train_loss": [round(e["train_loss"], 4) for e in out.history],
        "ap_curve": curve,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def add_keep_classes(ap: argparse.ArgumentParser) -> None:
    """``--keep-classes``: the detector's class head cut to some COCO classes before pruning (this
    benchmark's and compile_detectors.py's)."""
    ap.add_argument(
        "--keep-classes",
        type=int,
        nargs="+",
        default=None,
        metavar="COCO_INDEX",
        help="cut the class head to these classes first (0: a person detector); MAC targets stay "
        "reductions of the 80-class graph's MACs",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="centernet", choices=["centernet", "nanodet"])
    ap.add_argument("--target", type=float, default=2.0, help="MAC reduction (dense / kept)")
    ap.add_argument(
        "--jobs",
        nargs="+",
        default=["kgs:magnitude"],
        help="scheme:method pairs (e.g. kgs:magnitude filter:magnitude), channel:l2 (edgeguard's "
        "dependency-aware channel pruning), torch-pruning, and/or one-shot:SCHEME (hard-pruned "
        "AP50 only: uniform magnitude against output-error ranking)",
    )
    ap.add_argument("--epochs", type=int, default=3, help="distillation epochs over the photos")
    ap.add_argument(
        "--reg-epochs", type=int, default=0, help="regularisation epochs (reweighted, admm, ...)"
    )
    ap.add_argument(
        "--feature-weight", type=float, default=0.0, help="feature distillation on pruned layers"
    )
    add_keep_classes(ap)
    ap.add_argument(
        "--box-weight",
        type=float,
        default=None,
        help="weight of the distillation's box term (default: the detector's own: CenterNet 0.1, "
        "NanoDet 1)",
    )
    ap.add_argument(
        "--rates",
        default=None,
        metavar="PROFILE",
        help="per-layer rates (a YAML/JSON profile 'layer: rate') instead of one uniform rate for "
        "--target (which then only names the run); edgeguard jobs only",
    )
    ap.add_argument(
        "--sensitivity",
        type=float,
        default=None,
        metavar="MAX_RATE",
        help="per-layer rates from output-level sensitivity (each layer pruned alone, re-solved, "
        "scored by the distillation loss), no layer past MAX_RATE (e.g. 0.7); written to "
        "WORKDIR/<detector>/<scheme>-sensitivity-<target>x.json; edgeguard jobs only",
    )
    ap.add_argument(
        "--focal",
        type=float,
        default=0.0,
        help="quality-focal exponent of the distillation's score term (GFL's beta, e.g. 2; 0: KL)",
    )
    ap.add_argument(
        "--zoom-out",
        type=float,
        default=0.0,
        help="probability of a zoomed-out distillation image (the photo shrunk up to 3x on a "
        "mean-colour canvas: small persons)",
    )
    ap.add_argument(
        "--box-loss",
        choices=["l1", "iou"],
        default="l1",
        help="CenterNet's box distillation term: the sides' L1 (pixels) or 1 - IoU (scale-free)",
    )
    ap.add_argument(
        "--balance",
        type=float,
        default=0.0,
        help="size-balance exponent of the distillation loss (CenterNet: 2 gives a small "
        "person's cells the pull of a large one's; 0: every cell alike)",
    )
    ap.add_argument(
        "--feature-at",
        default="pruned",
        choices=["pruned", "heads", "both"],
        help="feature distillation on the pruned layers' outputs and/or the head convs' inputs",
    )
    ap.add_argument(
        "--mosaic", type=float, default=0.0, help="probability of a 2x2 mosaic distillation image"
    )
    ap.add_argument(
        "--distill-classes",
        type=int,
        nargs="+",
        default=None,
        metavar="COCO_INDEX",
        help="distil only these classes' scores (0: person); default all 80",
    )
    ap.add_argument(
        "--reconstruct",
        type=int,
        default=0,
        metavar="PHOTOS",
        help="hard pruning re-solves the kept weights on this many training photos and refits "
        "the other convs (edgeguard.prune.reconstruct); 0: plain masking",
    )
    ap.add_argument(
        "--reselect",
        action="store_true",
        help="with --reconstruct (and one-shot jobs): the units each layer keeps are chosen by OBS "
        "saliency during the reconstruction, as many as the method's masks keep",
    )
    ap.add_argument(
        "--calibration",
        type=int,
        default=16,
        metavar="PHOTOS",
        help="one-shot jobs: training photos of the input statistics and the reconstruction",
    )
    ap.add_argument(
        "--damp",
        type=float,
        default=0.01,
        help="one-shot jobs: reconstruction damping (times H's mean diagonal)",
    )
    ap.add_argument(
        "--pruner-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options of the pruners (e.g. ramp_epochs=10 exponent=1 criterion=output-error)",
    )
    ap.add_argument("--ap-every", type=int, default=2, help="held-out AP50 every N epochs")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5, help="Adam; 5e-4 wrecks the pretrained graph")
    ap.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "adam-relative", "sgd"],
        help="adam-relative: each filter's step scaled by its RMS (lr is then a relative change)",
    )
    ap.add_argument("--copies", type=int, default=1, help="augmented draws per photo and epoch")
    ap.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="EPOCHS",
        help="the distillation's step ramped up linearly over this many epochs (a graph far from "
        "its teacher after hard pruning takes its first, largest gradients at a small step)",
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="the student's weights averaged over steps (decay per step; 0: off): AP50 and the "
        "result are the average's",
    )
    ap.add_argument(
        "--diverge",
        type=float,
        default=2.0,
        metavar="FACTOR",
        help="stop a distillation whose epoch loss exceeds FACTOR times its best epoch's (0: off)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="distil on this fraction of each source's training photos (a data-scaling check; "
        "the held-out photos stay the same)",
    )
    ap.add_argument(
        "--start",
        default=None,
        metavar="CHECKPOINT",
        help="prune a finished job's fine-tuned graph further (its finetune/last.pt; same "
        "detector and --keep-classes): gradual pruning in stages, the teacher stays dense",
    )
    ap.add_argument("--workdir", default="runs/prune_detectors")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue each job from its last finished stage in --workdir (e.g. a hard-pruned "
        "pruned.safetensors copied there: fine-tuning starts afresh from it)",
    )
    ap.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="PATH",
        help="more unlabeled images to distil on, after the training photos: folders of images "
        "and/or video files",
    )
    ap.add_argument(
        "--frame-every", type=int, default=8, help="with --images: every Nth frame of a video"
    )
    ap.add_argument("--out", default=None, help="JSON of the results (default: beside workdir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the stages' progress lines
    options = kv(args.pruner_options)

    seed_everything(args.seed)
    photos = load_persons(data_root() / "persons")
    train, held_out = photos.split(0.3, args.seed)
    if not 0 < args.train_fraction <= 1:
        ap.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.train_fraction < 1:
        train = train.split(1 - args.train_fraction, args.seed)[0]
    det = get_detector(args.detector)
    target = args.target
    if args.keep_classes is not None:  # the class head's cut counts towards the target
        det, target = cut_classes(det, args.keep_classes, args.target)
        print(f"# classes {list(det.classes)}: the remaining target is {target:.3f}x")
    images = UnlabeledImages.from_sources(
        args.images,
        det.input_size,
        every=args.frame_every,
        first=[p.image for p in train],  # first: the reconstruction takes the first images
        copies=args.copies,
        mosaic=args.mosaic,
        zoom_out=args.zoom_out,
    )
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        progress=True,
        ema=args.ema,
        warmup_epochs=args.warmup,
        diverge=args.diverge,
    )
    reg = replace(cfg, epochs=args.reg_epochs) if args.reg_epochs > 0 else None
    print(
        f"# {args.detector}: {len(train)} training photos (unlabeled), "
        f"{len(images.images) - len(train)} more images, {len(held_out)} held out "
        f"({held_out.num_persons} persons); {platform.machine()}, {torch.get_num_threads()} threads"
    )
    loss = {  # DetectorDistillation's options (box_weight None: the detector's own)
        "box_weight": args.box_weight,
        "focal": args.focal,
        "balance": args.balance,
        "box_loss": args.box_loss,
    }
    rows = []
    for job in args.jobs:
        work = Path(args.workdir) / args.detector / f"{job.replace(':', '-')}-{args.target:g}x"
        if job.startswith("one-shot:"):
            row = one_shot_job(
                det,
                job.split(":", 1)[1],
                target,
                train,
                held_out,
                args.calibration,
                args.damp,
                args.reselect,
            )
        elif job in ("torch-pruning", "channel:l2"):
            row = channel_job(det, job, target, images, held_out, cfg, args.ap_every, loss)
        else:
            rates = args.rates
            if args.sensitivity is not None:
                scheme = job.split(":")[0]
                profile = work.parent / f"{scheme}-sensitivity-{args.target:g}x.json"
                if args.resume and profile.is_file():
                    rates = str(profile)
                else:
                    rates = sensitivity_profile(
                        det, scheme, images, target, args.sensitivity, profile
                    )
            row = edgeguard_job(
                det,
                job,
                target,
                images,
                held_out,
                cfg,
                reg,
                work,
                args.ap_every,
                args.feature_weight,
                options,
                args.distill_classes,
                args.reconstruct,
                args.reselect,
                args.resume,
                args.feature_at,
                start_state(args.start),
                loss,
                rates,
            )
        if "reduction" in row:  # against the 80-class detector
            row["reduction_of_full"] = round(row["reduction"] * args.target / target, 3)
        print(json.dumps(row))
        rows.append(row)
    out = Path(args.out or Path(args.workdir) / f"{args.detector}-{args.target:g}x.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": str(date.today()), "args": vars(args), "threads": torch.get_num_threads()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
