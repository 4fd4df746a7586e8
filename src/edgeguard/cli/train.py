"""``edgeguard train``: train a zoo model on a dataset."""

from __future__ import annotations

from pathlib import Path

from . import names
from .common import (
    add_data_args,
    add_train_args,
    check_model_data,
    datasets,
    kv,
    start_run,
    train_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model on a dataset")
    p.add_argument("--model", default="c3d", help=names.models())
    p.add_argument(
        "--model-option", action="append", metavar="KEY=VALUE", help="e.g. width=0.25, repeatable"
    )
    p.add_argument("--out", default="runs/train")
    add_data_args(p)
    add_train_args(p, epochs=10, lr=1e-3)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import evaluate, fit, seed_everything
    from ..engine.distributed import is_main_process
    from ..engine.rundir import finish_run
    from ..modelfile import save_model
    from ..models import build

    seed_everything(args.seed)
    train, val = datasets(args)
    opts = kv(args.model_option)
    opts.setdefault("num_classes", getattr(train, "num_classes", 10))
    model = build(args.model, **opts)
    check_model_data(model, train, f"dataset {args.dataset!r}")
    out = start_run(args, "train") if is_main_process() else Path(args.out)
    history = fit(
        model,
        train,
        val,
        train_config(args),
        checkpoint_dir=out / "checkpoints",
        resume=args.resume,
    )
    if is_main_process():
        acc = evaluate(model, val, args.batch_size, args.device)["accuracy"]
        shape = (1, *train[0][0].shape)
        path = save_model(
            model,
            out / "model.safetensors",
            extra={"input_shape": list(shape), "accuracy": acc, "dataset": args.dataset},
        )
        print(
            f"validation accuracy {100 * acc:.2f}% after {len(history.epochs)} epochs; saved {path}"
        )
        finish_run(out)
    return 0
