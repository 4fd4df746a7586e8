"""``edgeguard tshirt``: adversarial T-shirt patches against person detectors."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..settings import data_root
from . import names
from .common import FRACTION, add_overwrite, int_in, number_in, start_run


def add_parser(sub) -> None:
    p = sub.add_parser("tshirt", help="adversarial T-shirt patches against person detectors")
    p.add_argument("action", choices=["train", "eval"])
    p.add_argument(
        "--detector",
        default="hog",
        help=f"{names.detectors()} (centernet, nanodet: COCO CNNs on whole photos, `make models`); "
        "several (comma-separated) make an ensemble",
    )
    p.add_argument("--ensemble", default="minmax", choices=["minmax", "average"])
    p.add_argument(
        "--ascend",
        default="loss",
        choices=["loss", "found"],
        help="what the min-max weights ascend: the detectors' losses (the paper) or their shares "
        "of wearers still found (one scale for every detector)",
    )
    p.add_argument(
        "--found-only",
        action="store_true",
        help="each detector's loss counts only the wearers it finds without a patch (the persons "
        "its ASR counts)",
    )
    p.add_argument(
        "--zo",
        action="store_true",
        help="zeroth-order: train against the detector's outputs only (no gradients); with "
        "hog, OpenCV's own HOG detector",
    )
    rigid = p.add_mutually_exclusive_group()
    rigid.add_argument(
        "--rigid", action="store_true", help="the same transformations without TPS cloth bending"
    )
    rigid.add_argument(
        "--thys",
        action="store_true",
        help="Thys et al.'s own transformations (rotation, brightness, contrast, noise; no TPS, "
        "blur or perspective): their rigid patch as they trained it",
    )
    p.add_argument(
        "--cloth-video",
        help="video of a printed checkerboard on a T-shirt: its "
        "tracked deformations replace the random TPS",
    )
    p.add_argument("--board", default="6x4", help="the checkerboard's inner corners, COLSxROWS")
    p.add_argument("--patch", help="eval: patch.safetensors or an image")
    p.add_argument(
        "--eval-detectors", help="detectors to evaluate on (default: the training ones and opencv)"
    )
    p.add_argument(
        "--data",
        default=str(data_root() / "persons"),
        help="manifest.csv + images/ (default: $EDGEGUARD_DATA/persons)",
    )
    p.add_argument("--sources", default="pennfudan,inria", help="file-name prefixes to use")
    p.add_argument(
        "--held-out",
        type=number_in(0.0, 1.0, open_min=True, open_max=True),
        default=0.3,
        help="share of photos held out for evaluation, in (0, 1)",
    )
    p.add_argument("--limit", type=int_in(1), help="read at most this many photos")
    p.add_argument(
        "--shape",
        default="torso",
        choices=["torso", "square"],
        help="patch on the whole torso region (a shirt print) or the largest square in it",
    )
    p.add_argument("--scale", type=FRACTION, default=1.0, help="patch size / torso region, (0, 1]")
    p.add_argument("--size", help="patch pixels, N or HxW (default 80x56 torso, 64 square)")
    p.add_argument("--steps", type=int_in(1), default=300)
    p.add_argument("--batch", type=int_in(1), default=8)
    p.add_argument("--samples", type=int_in(1), default=2, help="EOT draws per person and step")
    p.add_argument("--eval-samples", type=int_in(1), default=4)
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading pickled detector modules (they run code when loaded)",
    )
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--out", default="runs/tshirt")
    add_overwrite(p)
    p.set_defaults(func=run)


def _patch_size(text: str | None, shape: str) -> tuple[int, int]:
    """Patch pixels (h, w) from ``"N"`` or ``"HxW"``; default 80x56 for a torso print (the torso
    region's 0.4 x height by 0.7 x width of a pedestrian box), 64x64 for a square."""
    from ..attacks.patch.placement import PATCH_SIZES

    if text is None:
        return PATCH_SIZES[shape]
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 4:
        raise UsageError(f"--size is N or HxW pixels, each >= 4, e.g. 64 or 80x56; got {text!r}")
    return (parts[0], parts[-1])


def run(args) -> int:
    import torch

    from ..attacks.patch import ZOConfig
    from ..attacks.patch.study import load_patch
    from ..attacks.patch.transforms import EOT
    from ..attacks.patch.workflow import TShirtStudy
    from ..engine.rundir import finish_run
    from ..modelfile import save_patch_file
    from ..report import Report
    from ..report.plots import save_patch

    sources = [s for s in args.sources.split(",") if s] or None
    train_specs = [d for d in args.detector.split(",") if d]
    eval_specs = [
        d for d in (args.eval_detectors or ",".join([*train_specs, "opencv"])).split(",") if d
    ]
    study = TShirtStudy.open(
        args.data,
        [*train_specs, *eval_specs],
        sources,
        args.held_out,
        args.seed,
        args.scale,
        args.limit,
        args.shape,
        trust_pickle=args.trust_pickle,
    )
    print(study.describe())
    if args.rigid:
        eot, drawn = EOT.rigid(), "rigid"
    elif args.thys:
        eot, drawn = EOT.thys(), "Thys et al."
    else:
        eot, drawn = EOT(), "TPS cloth deformation"
    if args.cloth_video:
        from dataclasses import replace

        from ..attacks.patch.tps import read_frames, tps_from_video

        try:
            cols, rows = (int(v) for v in args.board.lower().split("x"))
        except ValueError:
            raise UsageError(
                f"--board is COLSxROWS inner corners, e.g. 6x4, got {args.board!r}"
            ) from None
        splines = tps_from_video(read_frames(args.cloth_video, every=5), (cols, rows))
        if not splines:
            raise UsageError(f"no {args.board} checkerboard found in {args.cloth_video}")
        print(f"cloth deformation: {len(splines)} frames of {args.cloth_video} with the board")
        eot = replace(eot, splines=tuple(splines))
    size = _patch_size(args.size, args.shape)
    out = start_run(args, f"tshirt {args.action}", (args.patch, args.cloth_video))
    if args.action == "train":
        if args.zo:
            if len(train_specs) != 1:
                raise UsageError("--zo attacks one detector as a black box; give one --detector")
            # with hog: OpenCV's own HOG detector, through detectMultiScale's output
            spec = "opencv" if train_specs == ["hog"] else train_specs[0]
            label = f"zo-{spec}"
            zcfg = ZOConfig(steps=args.steps, eot=eot, size=size, seed=args.seed)
            result = study.train_zo(spec, zcfg)
        else:
            cfg = study.config(
                steps=args.steps,
                batch=args.batch,
                samples=args.samples,
                size=size,
                eot=eot,
                weighting=args.ensemble,
                ascend=args.ascend,
                found_only=args.found_only,
                seed=args.seed,
            )
            label = "+".join(train_specs) + (f" ({args.ensemble})" if len(train_specs) > 1 else "")
            result = study.train(train_specs, cfg)
        patch = result.patch
        save_patch_file(patch, out / "patch.safetensors", {"detectors": label})
        save_patch(patch, out / "patch.png")
        print(f"patch: {out / 'patch.png'} (print resolution), {out / 'patch.safetensors'}")
    else:
        if not args.patch:
            raise UsageError("tshirt eval needs --patch (patch.safetensors or an image)")
        patch = load_patch(args.patch, size)
        label = Path(args.patch).name
    noise = torch.rand(3, *size, generator=torch.Generator().manual_seed(args.seed + 1))
    patches = {label: patch, "random noise": noise}
    asr = study.evaluate(patches, eval_specs, eot, args.eval_samples)
    rows = []
    cols = ["patch", "detector", "persons detected", "samples", "hidden", "ASR %", "95% CI"]
    for (p, d), a in asr.items():
        lo, hi = a.interval()
        ci = f"{100 * lo:.1f}-{100 * hi:.1f}"
        rows.append([p, d, a.clean_detected, a.attacked, a.hidden, round(100 * a.rate, 1), ci])
        print(
            f"{p} vs {d}: ASR {100 * a.rate:.1f}% (95% CI {ci}, persons resampled; "
            f"{a.hidden}/{a.attacked} held-out samples of {a.clean_detected} persons detected "
            "without the patch)"
        )
    (out / "asr.json").write_text(
        json.dumps([dict(zip(cols, r, strict=True)) for r in rows], indent=1)
    )
    rep = Report("edgeguard: adversarial T-shirt")
    rep.paragraph(f"Held-out persons: {study.test_set.persons}; transformations: {drawn} + EOT.")
    rep.table(cols, rows)
    save_patch(patch, out / "patch.png")
    rep.figure("patch.png", "the patch (print resolution)")
    first = next((s for s in eval_specs if s != "opencv"), None)
    if first is not None:
        path = study.examples(first, patch, eot, out / "detections.png")
        rep.figure(path.name, f"held-out persons without / with the patch ({first})")
    print(f"report: {rep.save(out / 'report.html')}")
    finish_run(out)
    return 0
