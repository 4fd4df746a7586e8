"""``edgeguard prune``: regularise, prune and fine-tune a saved model."""

from __future__ import annotations

from ..errors import UsageError
from . import names
from .common import (
    UNIT,
    add_data_args,
    add_train_args,
    check_model_data,
    datasets,
    int_in,
    kv,
    number_in,
    start_run,
    train_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="regularise, prune and fine-tune a saved model")
    p.add_argument("checkpoint", help="model.safetensors written by train or prune")
    p.add_argument("--method", default="magnitude", help=names.pruners())
    p.add_argument(
        "--method-option", action="append", metavar="KEY=VALUE", help="e.g. lam=1e-4, rho=1e-3"
    )
    p.add_argument(
        "--reg-epochs", type=int_in(0), default=0, help="regularisation epochs before hard pruning"
    )
    p.add_argument(
        "--distill-weight", type=UNIT, default=0.0, help="knowledge distillation weight in [0, 1]"
    )
    p.add_argument(
        "--scheme",
        help=f"{names.schemes()}; '+'-joined for primal-proximal "
        "(default: kgs, or filter+column for primal-proximal)",
    )
    p.add_argument("--gm", type=int_in(1), help="filters per kernel group (vanilla/kgs, default 8)")
    p.add_argument(
        "--gn", type=int_in(1), help="input channels per kernel group (vanilla/kgs, default 4)"
    )
    p.add_argument(
        "--rate",
        type=number_in(0.0, 1.0, open_max=True),
        help="fraction of units removed in every prunable layer",
    )
    p.add_argument(
        "--flops-reduction", type=number_in(1.0), help="global target: dense MACs / kept MACs"
    )
    p.add_argument("--profile", help="YAML file: layer name -> rate")
    p.add_argument(
        "--reconstruct",
        type=int_in(0),
        default=0,
        metavar="N",
        help="re-solve the kept weights at hard pruning on the first N training samples "
        "(layer-wise least squares against the unpruned layers; 0: plain masking)",
    )
    p.add_argument(
        "--reselect",
        action="store_true",
        help="with --reconstruct: each layer keeps as many units as the method's masks, chosen by "
        "their OBS saliency on the layer's inputs (weight magnitude ignores the inputs' scales)",
    )
    p.add_argument("--out", default="runs/prune")
    add_data_args(p)
    add_train_args(p, epochs=3, lr=3e-4)
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from ..engine import seed_everything
    from ..engine.rundir import finish_run
    from ..engine.text import format_table
    from ..modelfile import load_model, save_model
    from ..prune import get_pruner, run_pruning
    from ..sparsity.summary import HEADERS, layer_table

    seed_everything(args.seed)
    given = [args.rate is not None, args.flops_reduction is not None, args.profile is not None]
    if sum(given) != 1:
        raise UsageError("give exactly one of --rate, --flops-reduction, --profile")
    if args.reselect and not args.reconstruct:
        raise UsageError("--reselect chooses units during the reconstruction: give --reconstruct N")
    opts = kv(args.method_option)
    opts |= {k: v for k, v in (("gm", args.gm), ("gn", args.gn)) if v is not None}
    pruner = get_pruner(args.method, args.scheme, **opts)  # bad names/options fail before loading
    model, _, spec = load_model(args.checkpoint)
    train, val = datasets(args)
    shape = check_model_data(model, train, f"dataset {args.dataset!r}", spec)
    rates = args.profile if args.profile is not None else args.rate
    finetune = train_config(args)
    regularize = replace(finetune, epochs=args.reg_epochs) if args.reg_epochs > 0 else None
    out = start_run(args, "prune", (args.checkpoint,))
    res = run_pruning(
        model,
        pruner,
        train,
        val,
        shape,
        rates=rates,
        flops_reduction=args.flops_reduction,
        regularize=regularize,
        finetune=finetune,
        distill_weight=args.distill_weight,
        workdir=out,
        resume=args.resume,
        reconstruct_inputs=[(train[i][0][None],) for i in range(min(args.reconstruct, len(train)))],
        reselect=args.reselect,
    )
    extra = {
        "input_shape": list(shape),
        "accuracy": res.accuracy_finetuned,
        "dataset": args.dataset,
        "method": res.method,
    }
    path = save_model(
        res.model, out / "model.safetensors", pruner.spec_scheme, res.rates, extra=extra
    )
    structure = getattr(pruner, "structure", res.scheme.name)
    schemes = dict.fromkeys(res.rates, structure)
    print(format_table(HEADERS, layer_table(res.model, shape, schemes)))
    print(
        f"\n{res.method} / {structure}: accuracy dense {100 * res.accuracy_dense:.2f}%  "
        f"hard-pruned {100 * res.accuracy_pruned:.2f}%  fine-tuned {100 * res.accuracy_finetuned:.2f}%   "
        f"FLOPs reduction {res.flops.reduction:.2f}x"
    )
    print(f"saved {path}")
    finish_run(out)
    return 0
