"""What the subcommands share: option types that refuse bad values in one line, option groups,
the run folder, datasets and attacks built from options."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from . import names

# options that do not change a run's results: a resumed run may differ in these
RUNTIME_OPTIONS = (
    "func",
    "command",
    "resume",
    "overwrite",
    "quiet",
    "no_progress",
    "out",
    "device",
)


def start_run(args, command: str, inputs: tuple[str | None, ...] = ()) -> Path:
    """Refuse a non-empty ``--out`` unless resumed with the same options or overwritten; record the
    run's options there (``run.json``)."""
    from ..engine.rundir import prepare_run_dir

    options = {k: v for k, v in vars(args).items() if k not in RUNTIME_OPTIONS}
    return prepare_run_dir(
        args.out,
        command,
        options,
        resume=getattr(args, "resume", False),
        overwrite=args.overwrite,
        resumable="resume" in args,
        inputs=inputs,
    )


def kv(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` options; values are read as YAML scalars/lists (``width=0.25``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        out[key] = parsed
    return out


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``edgeguard train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def checked(convert, kind: str, check, **bounds):
    """argparse type: ``text`` converted (``kind`` says what was expected), then ``check``ed."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value, "the value", **bounds)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def int_in(minimum: int, maximum: int | None = None):
    """argparse type: an integer in [minimum, maximum]."""
    from ..validation import check_int

    return checked(int, "an integer", check_int, minimum=minimum, maximum=maximum)


def number_in(
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
):
    """argparse type: a finite number in the interval (NaN and Inf refused)."""
    from ..validation import check_number

    return checked(
        float,
        "a number",
        check_number,
        minimum=minimum,
        maximum=maximum,
        open_min=open_min,
        open_max=open_max,
    )


POSITIVE = number_in(0.0, open_min=True)


NONNEG = number_in(0.0)


FRACTION = number_in(0.0, 1.0, open_min=True)  # (0, 1]


UNIT = number_in(0.0, 1.0)  # [0, 1]


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return shape


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="synthetic-video",
        help=names.datasets(),
    )
    p.add_argument("--data-root", help="folder of a dataset read from disk")
    p.add_argument(
        "--data-option", action="append", metavar="KEY=VALUE", help="dataset option, repeatable"
    )


def add_train_args(
    p: argparse.ArgumentParser, epochs: int, lr: float, diverge: float = 0.0
) -> None:
    p.add_argument("--epochs", type=int_in(1), default=epochs)
    p.add_argument("--batch-size", type=int_in(1), default=32)
    p.add_argument("--lr", type=POSITIVE, default=lr)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "adam-relative", "sgd"])
    p.add_argument("--weight-decay", type=NONNEG, default=0.0)
    p.add_argument(
        "--ema",
        type=number_in(0.0, 1.0, open_max=True),
        default=0.0,
        metavar="DECAY",
        help="evaluate and keep an exponential moving average of the weights (decay per step, "
        "e.g. 0.99; 0: off)",
    )
    p.add_argument(
        "--diverge",
        type=NONNEG,
        default=diverge,
        metavar="FACTOR",
        help="stop when an epoch's mean training loss exceeds FACTOR times the best epoch's "
        f"(> 1; 0: off; default {diverge:g}); the checkpoint keeps the epoch before",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    add_overwrite(p)
    p.add_argument("--no-progress", action="store_true")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (refused without it)",
    )


def datasets(args):
    from ..data import get_dataset

    opts = kv(args.data_option)
    train = get_dataset(args.dataset, train=True, root=args.data_root, **dict(opts))
    val = get_dataset(args.dataset, train=False, root=args.data_root, **dict(opts))
    return train, val


def check_model_data(model, dataset, what: str, spec: dict | None = None) -> tuple[int, ...]:
    """The input shape (batch 1) of ``dataset``; refuse a model that cannot take its inputs or
    scores fewer classes than it has, naming the shape the model was saved for (``spec``)."""
    from ..errors import ConfigError
    from ..models.check import check_classes

    if len(dataset) == 0:
        raise UsageError(f"{what} is empty")
    shape = (1, *dataset[0][0].shape)
    classes = getattr(dataset, "num_classes", None) or 1
    try:
        check_classes(model, shape, classes, what)
    except ConfigError as err:
        saved = (spec or {}).get("extra", {}).get("input_shape")
        hint = f"; the model was saved for inputs of shape {tuple(saved)}" if saved else ""
        raise ConfigError(f"{err}{hint}") from None
    return shape


def train_config(args):
    from ..engine import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        ema=args.ema,
        diverge=args.diverge,
        amp=args.amp,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
    )


def build_attack(name: str, args, strict: bool = True):
    """The attack ``name`` with ``--attack-option`` settings and ``--eps/--steps/--norm``; a flag the
    attack does not take is an error (``strict``) or skipped for it."""
    import inspect

    from ..attacks import ATTACKS, AttackError, get_attack

    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    settings = dict(kv(args.attack_option))
    accepted: set[str] = set()
    for cls in ATTACKS[name].__mro__:  # settings passed on through **kw reach a base class
        if "__init__" in vars(cls):
            params = inspect.signature(cls.__init__).parameters
            accepted |= set(params)
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                break
    for key in ("eps", "steps", "norm"):
        value = getattr(args, key)
        if value is not None:
            if key not in accepted:
                if strict:
                    raise UsageError(f"attack {name!r} takes no --{key}")
                continue
            settings[key] = value
    return get_attack(name, **settings), settings


def held_out(args):
    """``(x, y)``: the first ``--num`` held-out samples of ``--data``."""
    import torch

    from ..data import get_dataset

    data = get_dataset(args.data, train=False, root=args.data_root, **kv(args.data_option))
    n = min(args.num, len(data))
    if n == 0:
        raise UsageError(f"dataset {args.data!r} has no held-out samples")
    x = torch.stack([data[i][0] for i in range(n)])
    y = torch.tensor([int(data[i][1]) for i in range(n)])
    return x, y, data


def attack_arguments(p, attack: str, attack_help: str, num: int, out: str) -> None:
    """The model, attack and held-out data options shared by ``attack`` and ``explain``."""
    p.add_argument("--model", required=True, help="model.safetensors written by train or prune")
    p.add_argument("--attack", default=attack, help=attack_help)
    p.add_argument("--eps", type=NONNEG, help="perturbation budget (images in [0, 1])")
    p.add_argument("--steps", type=int_in(1), help="iterations (attacks that have them)")
    p.add_argument("--norm", help="linf, l2 (attacks that support several)")
    p.add_argument("--attack-option", action="append", metavar="KEY=VALUE", help="e.g. c=10, q=20")
    p.add_argument("--data", default="digits", help="dataset name (held-out split)")
    p.add_argument("--data-root", help="folder of a dataset read from disk")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--num", type=int_in(1), default=num, help="inputs to attack")
    p.add_argument("--out", default=out)
    add_overwrite(p)


def model_and_held_out(args):
    """The saved model (eval mode) of ``--model`` and the held-out inputs it is attacked on,
    ``(model, x, y, dataset)``, refused when the model cannot take them."""
    from ..modelfile import load_model

    model, _, spec = load_model(args.model)
    model.eval()
    x, y, data = held_out(args)
    check_model_data(model, data, f"dataset {args.data!r}", spec)
    return model, x, y, data
