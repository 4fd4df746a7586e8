"""``edgeguard prune-detector``: prune a COCO person detector (CenterNet, NanoDet) and fine-tune it
by distillation from the dense detector on unlabeled photos; person AP50 on held-out photos."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import names
from .common import add_train_args, int_in, kv, number_in, start_run, train_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune-detector",
        help="prune a COCO detector and fine-tune it by distillation on unlabeled photos",
    )
    p.add_argument("detector", help="centernet or nanodet (`make models` fetches them)")
    p.add_argument(
        "--flops-reduction",
        type=number_in(1.0),
        required=True,
        help="dense MACs / kept MACs at the detector's input size",
    )
    p.add_argument("--method", default="magnitude", help=names.pruners())
    p.add_argument("--method-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--scheme", default="kgs", help=names.schemes())
    p.add_argument(
        "--reg-epochs", type=int_in(0), default=0, help="regularisation epochs before hard pruning"
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="folders of unlabeled images and/or video files to distil on (default: the training "
        "split of --persons)",
    )
    p.add_argument(
        "--frame-every",
        type=int_in(1),
        default=8,
        metavar="N",
        help="with --images: every Nth frame of a video",
    )
    p.add_argument(
        "--persons",
        help="person photographs with boxes (manifest.csv + images/): the held-out split scores "
        "AP50 (default: the data root's persons/)",
    )
    p.add_argument(
        "--photos",
        type=int_in(1),
        help="use only the first N training photos and N/2 held-out ones (a quick look)",
    )
    p.add_argument(
        "--reconstruct",
        type=int_in(0),
        default=0,
        metavar="N",
        help="re-solve the kept weights at hard pruning on N whole photos (0: plain masking)",
    )
    p.add_argument(
        "--reselect",
        action="store_true",
        help="with --reconstruct: the units each layer keeps are chosen by OBS saliency",
    )
    p.add_argument(
        "--person-only",
        action="store_true",
        help="a person detector: the class head cut to the person class (its MACs count towards "
        "--flops-reduction, against the 80-class detector) and only the person scores and the "
        "boxes distilled (CenterNet at 2x keeps more person AP50)",
    )
    p.add_argument("--out", default="runs/prune-detector")
    # a distillation whose loss doubles has diverged (filter masks at lr 1e-3: docs/benchmarks.md)
    add_train_args(p, epochs=4, lr=1e-3, diverge=2.0)
    # folded batch norms: relative steps; a detector's photos are large, so small batches
    p.set_defaults(func=run, batch_size=4, optimizer="adam-relative")


def run(args) -> int:
    from dataclasses import replace

    from ..data import UnlabeledImages
    from ..data.persons import PersonPhotos, load_persons
    from ..engine import seed_everything
    from ..engine.rundir import finish_run
    from ..modelfile import save_model
    from ..models.detectors import get_detector
    from ..prune import check_distillable, cut_classes, get_pruner, prune_detector
    from ..settings import data_root

    if args.reselect and not args.reconstruct:
        raise UsageError("--reselect chooses units during the reconstruction: give --reconstruct N")
    seed_everything(args.seed)
    pruner = get_pruner(args.method, args.scheme, **kv(args.method_option))
    det = get_detector(args.detector)
    check_distillable(det)  # before the run folder is made
    target = args.flops_reduction
    if args.person_only:
        det, target = cut_classes(det, [0], target)
    root = Path(args.persons) if args.persons else data_root() / "persons"
    train, held = load_persons(root).split(0.3, args.seed)
    if args.photos:
        train = PersonPhotos(train.photos[: args.photos])
        held = PersonPhotos(held.photos[: max(1, args.photos // 2)])
    if args.images:
        images = UnlabeledImages.from_sources(args.images, det.input_size, every=args.frame_every)
    else:
        images = UnlabeledImages.from_photos(train, det.input_size)
    finetune = train_config(args)
    regularize = replace(finetune, epochs=args.reg_epochs) if args.reg_epochs > 0 else None
    out = start_run(args, "prune-detector", (*(args.images or ()), str(root)))
    res = prune_detector(
        det,
        pruner,
        images,
        held,
        flops_reduction=target,
        finetune=finetune,
        regularize=regularize,
        workdir=out,
        resume=args.resume,
        reconstruct=args.reconstruct,
        reselect=args.reselect,
        classes=[0] if args.person_only else None,
    )
    extra = {
        "input_shape": [1, 3, *det.input_size],
        "detector": args.detector,
        "distilled_classes": "person" if args.person_only else "all",
        "classes": list(getattr(det, "classes", range(80))),
        "ap50": res.accuracy_finetuned,
        "method": res.method,
    }
    path = save_model(
        res.model, out / "model.safetensors", pruner.spec_scheme, res.rates, extra=extra
    )
    structure = getattr(pruner, "structure", res.scheme.name)
    print(
        f"{args.detector} {res.method} / {structure}: held-out person AP50 dense "
        f"{res.accuracy_dense:.3f}  hard-pruned {res.accuracy_pruned:.3f}  fine-tuned "
        f"{res.accuracy_finetuned:.3f}   MAC reduction "
        f"{res.flops.reduction * args.flops_reduction / target:.2f}x "
        f"({len(images)} distillation images, {len(held)} held-out photos)"
    )
    onto = f"get_detector({args.detector!r})" + (".keep_classes([0])" if args.person_only else "")
    print(f"saved {path} (load onto {onto}.net with load_model)")
    finish_run(out)
    return 0
