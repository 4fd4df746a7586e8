"""``edgeguard`` command line: parse, call the library, print.  Every subcommand is one library call."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgeguardError, UsageError
from .settings import data_root

log = logging.getLogger("edgeguard")


# options that do not change a run's results: a resumed run may differ in these
_RUNTIME_OPTIONS = (
    "func",
    "command",
    "resume",
    "overwrite",
    "quiet",
    "no_progress",
    "out",
    "device",
)


def _start_run(args, command: str, inputs: tuple[str | None, ...] = ()) -> Path:
    """Refuse a non-empty ``--out`` unless resumed with the same options or overwritten; record the
    run's options there (``run.json``)."""
    from .engine.rundir import prepare_run_dir

    options = {k: v for k, v in vars(args).items() if k not in _RUNTIME_OPTIONS}
    return prepare_run_dir(args.out, command, options, resume=getattr(args, "resume", False),
                           overwrite=args.overwrite, resumable="resume" in args,
                           inputs=inputs)  # fmt: skip


def _kv(items: list[str] | None) -> dict[str, Any]:
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``edgeguard train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(convert, kind: str, check, **bounds):
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


def _int(minimum: int, maximum: int | None = None):
    """argparse type: an integer in [minimum, maximum]."""
    from .validation import check_int

    return _checked(int, "an integer", check_int, minimum=minimum, maximum=maximum)


def _float(minimum: float | None = None, maximum: float | None = None, open_min: bool = False,
           open_max: bool = False):  # fmt: skip
    """argparse type: a finite number in the interval (NaN and Inf refused)."""
    from .validation import check_number

    return _checked(float, "a number", check_number, minimum=minimum, maximum=maximum,
                    open_min=open_min, open_max=open_max)  # fmt: skip


POSITIVE = _float(0.0, open_min=True)
NONNEG = _float(0.0)
FRACTION = _float(0.0, 1.0, open_min=True)  # (0, 1]
UNIT = _float(0.0, 1.0)  # [0, 1]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return shape


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="synthetic-video",
        help="synthetic-video, ucf101, hmdb51, digits, cifar10, cifar100",
    )
    p.add_argument("--data-root", help="folder of a dataset read from disk")
    p.add_argument(
        "--data-option", action="append", metavar="KEY=VALUE", help="dataset option, repeatable"
    )


def _add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    p.add_argument("--epochs", type=_int(1), default=epochs)
    p.add_argument("--batch-size", type=_int(1), default=32)
    p.add_argument("--lr", type=POSITIVE, default=lr)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=NONNEG, default=0.0)
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    _add_overwrite(p)
    p.add_argument("--no-progress", action="store_true")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (refused without it)")  # fmt: skip


def _datasets(args):
    from .data import get_dataset

    opts = _kv(args.data_option)
    train = get_dataset(args.dataset, train=True, root=args.data_root, **dict(opts))
    val = get_dataset(args.dataset, train=False, root=args.data_root, **dict(opts))
    return train, val


def _check_model_data(model, dataset, what: str, spec: dict | None = None) -> tuple[int, ...]:
    """The input shape (batch 1) of ``dataset``; refuse a model that cannot take its inputs or
    scores fewer classes than it has, naming the shape the model was saved for (``spec``)."""
    from .errors import ConfigError
    from .models.check import check_classes

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


def _config(args):
    from .engine import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, amp=args.amp, device=args.device, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip


def cmd_train(args) -> int:
    from .engine import evaluate, fit, seed_everything
    from .engine.distributed import is_main_process
    from .engine.rundir import finish_run
    from .models import build
    from .sparsity import save_pruned

    seed_everything(args.seed)
    train, val = _datasets(args)
    opts = _kv(args.model_option)
    opts.setdefault("num_classes", getattr(train, "num_classes", 10))
    model = build(args.model, **opts)
    _check_model_data(model, train, f"dataset {args.dataset!r}")
    out = _start_run(args, "train") if is_main_process() else Path(args.out)
    history = fit(
        model, train, val, _config(args), checkpoint_dir=out / "checkpoints", resume=args.resume
    )
    if is_main_process():
        acc = evaluate(model, val, args.batch_size, args.device)["accuracy"]
        shape = (1, *train[0][0].shape)
        path = save_pruned(
            model,
            out / "model.safetensors",
            extra={"input_shape": list(shape), "accuracy": acc, "dataset": args.dataset},
        )
        print(
            f"validation accuracy {100 * acc:.2f}% after {len(history.epochs)} epochs; saved {path}"
        )
        finish_run(out)
    return 0


def cmd_prune(args) -> int:
    from dataclasses import replace

    from .engine import seed_everything
    from .engine.rundir import finish_run
    from .engine.text import format_table
    from .prune import get_pruner, run_pruning
    from .sparsity import load_pruned, save_pruned
    from .sparsity.summary import HEADERS, layer_table

    seed_everything(args.seed)
    given = [args.rate is not None, args.flops_reduction is not None, args.profile is not None]
    if sum(given) != 1:
        raise UsageError("give exactly one of --rate, --flops-reduction, --profile")
    opts = _kv(args.method_option)
    opts |= {k: v for k, v in (("gm", args.gm), ("gn", args.gn)) if v is not None}
    pruner = get_pruner(args.method, args.scheme, **opts)  # bad names/options fail before loading
    model, _, spec = load_pruned(args.checkpoint)
    train, val = _datasets(args)
    shape = _check_model_data(model, train, f"dataset {args.dataset!r}", spec)
    rates = args.profile if args.profile is not None else args.rate
    finetune = _config(args)
    regularize = replace(finetune, epochs=args.reg_epochs) if args.reg_epochs > 0 else None
    out = _start_run(args, "prune", (args.checkpoint,))
    res = run_pruning(
        model, pruner, train, val, shape, rates=rates, flops_reduction=args.flops_reduction,
        regularize=regularize, finetune=finetune, distill_weight=args.distill_weight,
        workdir=out, resume=args.resume,
    )  # fmt: skip
    extra = {
        "input_shape": list(shape),
        "accuracy": res.accuracy_finetuned,
        "dataset": args.dataset,
        "method": res.method,
    }
    path = save_pruned(
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


def cmd_info(args) -> int:
    from .engine.text import format_table
    from .sparsity import load_pruned
    from .sparsity.summary import HEADERS, layer_table

    model, _, spec = load_pruned(args.checkpoint)
    shape = args.input_shape or tuple(spec.get("extra", {}).get("input_shape") or ())
    if not shape:
        raise UsageError("the checkpoint records no input shape; pass --input-shape 1,3,16,112,112")
    schemes = {n: e["scheme"]["name"] for n, e in spec["layers"].items() if "scheme" in e}
    print(f"model: {json.dumps(spec.get('arch'))}   input: {list(shape)}")
    print(format_table(HEADERS, layer_table(model, tuple(shape), schemes)))
    extra = {k: v for k, v in spec.get("extra", {}).items() if k != "input_shape"}
    if extra:
        print("recorded:", json.dumps(extra))
    return 0


def cmd_compile(args) -> int:
    import torch

    from .compile import compile_model
    from .sparsity import load_pruned

    model, _, spec = load_pruned(args.checkpoint)
    model.eval()
    shape = args.input_shape or tuple(spec.get("extra", {}).get("input_shape") or ())
    if not shape:
        raise UsageError("the checkpoint records no input shape; pass --input-shape 1,3,16,112,112")
    if args.threads:
        torch.set_num_threads(args.threads)
    compiled = compile_model(model, args.backend, input_shape=tuple(shape),
                             max_density=args.max_density)  # fmt: skip
    print(compiled.summary())
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x.to("cuda" if compiled.backend == "cuda" else "cpu")).cpu()
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    print(f"max relative error against the masked model: {err:.2e}")
    if args.bench:
        from .compile.bench import benchmark, steady_allocator

        # a stable dense baseline: no page faults on each large output (see steady_allocator)
        steady_allocator()
        print(f"threads: {torch.get_num_threads()}")
        print(benchmark(model, compiled, tuple(shape), repeats=args.repeats).table())
    if args.onnx:
        from .compile.onnx_export import export_onnx

        path = export_onnx(compiled, args.onnx, tuple(shape))
        print(f"ONNX written to {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime is not installed: the ONNX file was not checked")
        else:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            y = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
            err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            print(f"ONNX Runtime max relative error against the masked model: {err:.2e}")
    return 0


def _build_attack(name: str, args, strict: bool = True):
    """The attack ``name`` with ``--attack-option`` settings and ``--eps/--steps/--norm``; a flag the
    attack does not take is an error (``strict``) or skipped for it."""
    import inspect

    from .attacks import ATTACKS, AttackError, get_attack

    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    settings = dict(_kv(args.attack_option))
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


def _held_out(args):
    """``(x, y)``: the first ``--num`` held-out samples of ``--data``."""
    import torch

    from .data import get_dataset

    data = get_dataset(args.data, train=False, root=args.data_root, **_kv(args.data_option))
    n = min(args.num, len(data))
    if n == 0:
        raise UsageError(f"dataset {args.data!r} has no held-out samples")
    x = torch.stack([data[i][0] for i in range(n)])
    y = torch.tensor([int(data[i][1]) for i in range(n)])
    return x, y, data


def cmd_attack(args) -> int:
    import torch

    from .engine.rundir import finish_run
    from .report import plots
    from .sparsity import load_pruned

    model, _, spec = load_pruned(args.model)
    model.eval()
    x, y, data = _held_out(args)
    _check_model_data(model, data, f"dataset {args.data!r}", spec)
    n = len(x)
    attack, settings = _build_attack(args.attack, args)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if not correct.any():
        raise UsageError("the model misclassifies every selected input; nothing to attack")
    x, y = x[correct], y[correct]
    target = (y + args.target_shift) % model(x[:1]).shape[1] if args.target_shift else None
    out = _start_run(args, "attack", (args.model,))
    res = attack.run(model, x, y, target)
    norm = getattr(attack, "norm", "linf")
    print(f"attack {args.attack} {settings} on {len(x)} correctly classified inputs "
          f"(clean accuracy {float(correct.float().mean()):.3f} on {n})")  # fmt: skip
    print(f"success rate: {res.success_rate:.3f}")
    print(f"mean {norm} distortion (successful): {res.mean_distortion(norm):.4f}")
    print(f"mean queries: {float(res.queries.float().mean()):.1f}")
    path = plots.attack_grid(x, res.adversarial, out / f"{args.attack}_grid.png")
    print(f"image grid: {path}")
    finish_run(out)
    return 0


def cmd_explain(args) -> int:
    from .data import Broden, SyntheticConcepts
    from .engine.rundir import finish_run
    from .explain import HEADERS, explain_attacks
    from .report import Report
    from .sparsity import load_pruned

    model, _, spec = load_pruned(args.model)
    model.eval()
    x, y, data = _held_out(args)
    _check_model_data(model, data, f"dataset {args.data!r}", spec)
    names = [a.strip() for a in args.attack.split(",") if a.strip()]
    attacks = {name: _build_attack(name, args, strict=len(names) == 1)[0] for name in names}
    concepts = None
    if args.concepts == "synthetic":
        if x.shape[1] != 3:
            raise UsageError("--concepts synthetic needs a model on RGB images (3 channels)")
        concepts = SyntheticConcepts(args.concept_images, size=x.shape[-1], seed=12345)
    elif args.concepts:
        concepts = Broden(args.concepts, limit=args.concept_images)
    out = _start_run(args, "explain", (args.model,))
    study = explain_attacks(model, x, y, attacks, out_dir=out, concepts=concepts, layer=args.layer,
                            cam_layer=args.cam_layer, fraction=args.fraction)  # fmt: skip
    e0 = study.explanations[0]
    print(f"unit PSE at {e0.unit.layer!r} ({e0.unit.method}); Grad-CAM and sensitivity at "
          f"{e0.cam_layer!r}; top-{100 * args.fraction:g}% pixel overlaps")  # fmt: skip
    print(f"{e0.misclassified} of {len(x)} inputs misclassified before any attack (skipped)")
    print(study.table())
    rep = Report(f"edgeguard explain: {args.model}")
    rep.table(list(HEADERS), study.rows())
    if study.dissection is not None:
        d = study.dissection
        print(f"dissection of {d.layer!r}: {int(d.is_detector.sum())} of {len(d.thresholds)} units "
              f"are detectors {d.detector_counts()}")  # fmt: skip
        rep.paragraph(f"Dissection of {d.layer}: {int(d.is_detector.sum())} detector units "
                      f"{d.detector_counts()}.")  # fmt: skip
    for caption, path in study.figures.items():
        rep.figure(path.name, caption)
    print(f"report: {rep.save(out / 'report.html')}")
    finish_run(out)
    return 0


def _gnn_setup(args):
    """(graph, model factory ``build(data)``, train config) from the ``gnn`` options."""
    from .data.graphs import load_graph
    from .engine import TrainConfig, seed_everything
    from .models.graph import gcn, graphsage

    seed_everything(args.seed)
    data = load_graph(args.dataset, root=args.data_root, seed=args.seed)
    classes = int(data.y.max()) + 1
    arch = {"gcn": gcn, "sage": graphsage}[args.model]

    def build(data):
        return arch(data.num_features, classes, hidden=args.hidden)

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, scheduler="none",
                      seed=args.seed)  # fmt: skip
    print(f"{args.dataset}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges, "
          f"{data.num_features} features, {classes} classes; model {args.model}")  # fmt: skip
    return data, build, cfg


def _graph_attacks(names: str, budget: float, seed: int) -> dict:
    from .attacks.graph import get_graph_attack

    out = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        out[name] = get_graph_attack(name, budget=budget, seed=seed)
    return out


def _describe_graph_attack(name: str, attack, res, data, accuracy: float) -> str:
    if attack.name == "pgd-features":
        what = f"{res.num_flips} feature flips"
    else:
        add, rem = res.added_removed(data)
        what = f"{res.num_flips} edge flips (+{add}/-{rem})"
    return (f"{name}: accuracy {accuracy:.4f} after {what}, budget {res.budget}, "
            f"{res.queries} model evaluations, {res.seconds:.1f} s")  # fmt: skip


def cmd_gnn(args) -> int:
    from .attacks.graph import poison
    from .defenses.graph import robust_train
    from .engine.graph import node_accuracy
    from .engine.rundir import finish_run

    if not 0 < args.budget <= 1:
        raise UsageError(f"--budget is a fraction of edges in (0, 1], got {args.budget}")
    if args.mode == "poisoning" and args.action != "attack":
        raise UsageError("--mode poisoning goes with the attack action (it retrains the model)")
    data, build, cfg = _gnn_setup(args)
    attacks = _graph_attacks(args.attack, args.budget, args.seed)
    if args.mode == "poisoning":
        surrogate = None  # trained once, attacked by each attack
        for name, attack in attacks.items():
            res = poison(attack, lambda: build(data), data, cfg, seed=args.seed,
                         surrogate=surrogate)  # fmt: skip
            surrogate = res.surrogate
            print(f"clean test accuracy: {res.clean:.4f}; surrogate on the perturbed graph "
                  f"(evasion): {res.evasion:.4f}")  # fmt: skip
            print(_describe_graph_attack(f"{name} (poisoning, retrained)", attack, res.attack,
                                         data, res.poisoned))  # fmt: skip
        return 0
    model = build(data)
    if args.action == "attack":
        robust_train(model, data, None, cfg, log_every=max(1, args.epochs // 5))
    else:
        budget = args.budget if args.inner_budget is None else args.inner_budget
        inner = _graph_attacks(args.inner, budget, args.seed)
        out = _start_run(args, "gnn robust-train")
        hist = robust_train(model, data, list(inner.values()), cfg,
                            checkpoint_dir=out, resume=args.resume,
                            log_every=max(1, args.epochs // 10),
                            weighting=args.weighting)  # fmt: skip
        secs = [e["seconds"] for e in hist.epochs]
        print(f"robust training ({args.inner}): {sum(secs) / len(secs):.3f} s per epoch")
        if "weights" in hist.epochs[-1]:
            print(f"final {args.weighting} weights over {args.inner}: {hist.epochs[-1]['weights']}")
    model.eval()
    print(f"clean test accuracy: {node_accuracy(model, data):.4f}")
    for name, attack in attacks.items():
        res = attack(model, data)
        print(_describe_graph_attack(name, attack, res, data, node_accuracy(model, res.data)))
    if args.action == "robust-train":
        from safetensors.torch import save_file

        from .engine.atomic import atomic_path

        out = Path(args.out) / "model.safetensors"
        with atomic_path(out) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        print(f"weights: {out}")
        finish_run(out.parent)
    return 0


def _patch_size(text: str | None, shape: str) -> tuple[int, int]:
    """Patch pixels (h, w) from ``"N"`` or ``"HxW"``; default 80x56 for a torso print (the torso
    region's 0.4 x height by 0.7 x width of a pedestrian box), 64x64 for a square."""
    from .attacks.patch.placement import PATCH_SIZES

    if text is None:
        return PATCH_SIZES[shape]
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 4:
        raise UsageError(f"--size is N or HxW pixels, each >= 4, e.g. 64 or 80x56; got {text!r}")
    return (parts[0], parts[-1])


def cmd_tshirt(args) -> int:
    from functools import partial

    import torch
    from safetensors.torch import save_file

    from .attacks.patch.study import (
        COCO_DETECTORS,
        detection_examples,
        detector_checks,
        evaluate_patches,
        load_crops,
        load_patch,
        load_scenes,
        only_detected,
        training_view,
    )
    from .attacks.patch.transforms import EOT
    from .attacks.patch.tshirt import (
        AdversarialTShirt,
        OpenCVHOGBlackBox,
        TShirtConfig,
        ZOConfig,
        ZOTShirt,
        detected,
        person_scores,
    )
    from .engine.atomic import atomic_path
    from .engine.rundir import finish_run
    from .models.detectors import get_detector
    from .report import Report
    from .report.plots import save_patch

    sources = [s for s in args.sources.split(",") if s] or None
    train_specs = [d for d in args.detector.split(",") if d]
    eval_specs = [d for d in (args.eval_detectors or ",".join([*train_specs, "opencv"])).split(",")
                  if d]  # fmt: skip
    # COCO detectors see whole photos: every person in a photo wears the patch (scenes); the
    # sliding-window detectors work on person-normalised crops
    whole = any(d.split(":")[0] in COCO_DETECTORS for d in [*train_specs, *eval_specs])
    iou = 0.5 if whole else 0.3
    if whole:
        split = load_scenes(args.data, sources, args.held_out, args.seed, args.scale, args.limit,
                            args.shape)  # fmt: skip
        print(f"whole photos: {len(split.train)} train photos ({split.train.persons} wearers), "
              f"{len(split.test)} held-out photos ({split.test.persons} wearers); skipped "
              f"{split.skipped}")  # fmt: skip
    else:
        split = load_crops(args.data, sources, args.held_out, args.seed, args.scale, args.limit,
                           args.shape)  # fmt: skip
        print(f"persons: {len(split.train)} train crops from {split.photos[0]} photos, "
              f"{len(split.test)} held-out crops from {split.photos[1]} photos; skipped "
              f"{split.skipped}")  # fmt: skip
    eot = EOT.rigid() if args.rigid else EOT()
    if args.cloth_video:
        from dataclasses import replace

        from .attacks.patch.tps import read_frames, tps_from_video

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
    out = _start_run(args, f"tshirt {args.action}", (args.patch, args.cloth_video))
    if args.action == "train":
        if args.zo:
            if train_specs == ["hog"]:  # OpenCV's own HOG, through detectMultiScale's output
                box = OpenCVHOGBlackBox()
                see, score, label = box.detected, box.scores, "zo-opencv"
            elif len(train_specs) == 1:  # the detector's output scores only: no gradients
                det = get_detector(train_specs[0], args.trust_pickle)

                def score(images, boxes, det=det):
                    with torch.no_grad():
                        return person_scores(det, images, boxes, iou, kappa=1.0)

                see, label = partial(detected, det, iou=iou), f"zo-{train_specs[0]}"
            else:
                raise UsageError("--zo attacks one detector as a black box; give one --detector")
            crops = only_detected(see, split.train)
            trainer = ZOTShirt(score, ZOConfig(steps=args.steps, eot=eot, size=size,
                                               seed=args.seed))  # fmt: skip
        else:
            dets = [training_view(get_detector(d, args.trust_pickle)) for d in train_specs]
            crops = split.train
            for d in dets:  # attack the persons every training detector finds
                crops = only_detected(partial(detected, d, iou=iou), crops)
            cfg = TShirtConfig(steps=args.steps, batch=args.batch, samples=args.samples, size=size,
                               eot=eot, weighting=args.ensemble, seed=args.seed, iou=iou,
                               topk=1 if whole else 3)  # fmt: skip
            trainer = AdversarialTShirt(dets, cfg)
            label = "+".join(train_specs) + (f" ({args.ensemble})" if len(dets) > 1 else "")
        if len(crops) == 0:
            raise UsageError("no training person is detected without a patch: nothing to attack")
        print(f"training on {len(crops)} {'photos with a wearer' if whole else 'persons'} the "
              "detector(s) find")  # fmt: skip
        result = trainer.train(crops)
        patch = result.patch
        with atomic_path(out / "patch.safetensors") as tmp:
            save_file({"patch": patch.contiguous()}, str(tmp), metadata={"detectors": label})
        save_patch(patch, out / "patch.png")
        print(f"patch: {out / 'patch.png'} (print resolution), {out / 'patch.safetensors'}")
    else:
        if not args.patch:
            raise UsageError("tshirt eval needs --patch (patch.safetensors or an image)")
        patch = load_patch(args.patch, size)
        label = Path(args.patch).name
    noise = torch.rand(3, *size, generator=torch.Generator().manual_seed(args.seed + 1))
    patches = {label: patch, "random noise": noise}
    checks = detector_checks(eval_specs, args.trust_pickle, iou=iou)
    asr = evaluate_patches(patches, checks, split.test, eot, args.eval_samples)
    rows = []
    cols = ["patch", "detector", "persons detected", "samples", "hidden", "ASR %", "95% CI"]
    for (p, d), a in asr.items():
        lo, hi = a.interval()
        ci = f"{100 * lo:.1f}-{100 * hi:.1f}"
        rows.append([p, d, a.clean_detected, a.attacked, a.hidden, round(100 * a.rate, 1), ci])
        print(f"{p} vs {d}: ASR {100 * a.rate:.1f}% (95% CI {ci}, persons resampled; "
              f"{a.hidden}/{a.attacked} held-out samples of {a.clean_detected} persons detected "
              "without the patch)")  # fmt: skip
    (out / "asr.json").write_text(json.dumps([dict(zip(cols, r, strict=True)) for r in rows],
                                             indent=1))  # fmt: skip
    rep = Report("edgeguard: adversarial T-shirt")
    rep.paragraph(f"Held-out persons: {len(split.test)}; transformations: "
                  f"{'rigid' if args.rigid else 'TPS cloth deformation'} + EOT.")  # fmt: skip
    rep.table(cols, rows)
    save_patch(patch, out / "patch.png")
    rep.figure("patch.png", "the patch (print resolution)")
    first = next((s for s in eval_specs if s != "opencv"), None)
    if first is not None:
        det = get_detector(first, args.trust_pickle)
        path = detection_examples(det, split.test, patch, eot, out / "detections.png", iou=iou)
        rep.figure(path.name, f"held-out persons without / with the patch ({first})")
    print(f"report: {rep.save(out / 'report.html')}")
    finish_run(out)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    path = run_demo(Path(args.out), quick=args.quick)
    print(f"report written to {path}")
    return 0


def _attack_arguments(p, attack: str, attack_help: str, num: int, out: str) -> None:
    """The model, attack and held-out data options shared by ``attack`` and ``explain``."""
    p.add_argument("--model", required=True, help="model.safetensors written by train or prune")
    p.add_argument("--attack", default=attack, help=attack_help)
    p.add_argument("--eps", type=NONNEG, help="perturbation budget (images in [0, 1])")
    p.add_argument("--steps", type=_int(1), help="iterations (attacks that have them)")
    p.add_argument("--norm", help="linf, l2 (attacks that support several)")
    p.add_argument("--attack-option", action="append", metavar="KEY=VALUE", help="e.g. c=10, q=20")
    p.add_argument("--data", default="digits", help="dataset name (held-out split)")
    p.add_argument("--data-root", help="folder of a dataset read from disk")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--num", type=_int(1), default=num, help="inputs to attack")
    p.add_argument("--out", default=out)
    _add_overwrite(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeguard", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo model on a dataset")
    p.add_argument(
        "--model", default="c3d", help="c3d, r2plus1d_18, digits_cnn, vgg16_cifar, resnet18_cifar"
    )
    p.add_argument(
        "--model-option", action="append", metavar="KEY=VALUE", help="e.g. width=0.25, repeatable"
    )
    p.add_argument("--out", default="runs/train")
    _add_data_args(p)
    _add_train_args(p, epochs=10, lr=1e-3)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="regularise, prune and fine-tune a saved model")
    p.add_argument("checkpoint", help="model.safetensors written by train or prune")
    p.add_argument(
        "--method", default="magnitude", help="magnitude, reweighted, admm, primal-proximal"
    )
    p.add_argument(
        "--method-option", action="append", metavar="KEY=VALUE", help="e.g. lam=1e-4, rho=1e-3"
    )
    p.add_argument(
        "--reg-epochs", type=_int(0), default=0, help="regularisation epochs before hard pruning"
    )
    p.add_argument(
        "--distill-weight", type=UNIT, default=0.0, help="knowledge distillation weight in [0, 1]"
    )
    p.add_argument(
        "--scheme",
        help="filter, channel, column, vanilla, kgs; '+'-joined for primal-proximal "
        "(default: kgs, or filter+column for primal-proximal)",
    )
    p.add_argument("--gm", type=_int(1), help="filters per kernel group (vanilla/kgs, default 8)")
    p.add_argument(
        "--gn", type=_int(1), help="input channels per kernel group (vanilla/kgs, default 4)"
    )
    p.add_argument(
        "--rate",
        type=_float(0.0, 1.0, open_max=True),
        help="fraction of units removed in every prunable layer",
    )
    p.add_argument(
        "--flops-reduction", type=_float(1.0), help="global target: dense MACs / kept MACs"
    )
    p.add_argument("--profile", help="YAML file: layer name -> rate")
    p.add_argument("--out", default="runs/prune")
    _add_data_args(p)
    _add_train_args(p, epochs=3, lr=3e-4)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="per-layer table of a saved model")
    p.add_argument("checkpoint")
    p.add_argument("--input-shape", type=_shape, help="e.g. 1,3,16,112,112 (batch included)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compile", help="compile a pruned model to fast sparse code, and time it")
    p.add_argument("checkpoint", help="model.safetensors written by prune")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "torch"])
    p.add_argument("--input-shape", type=_shape, help="e.g. 1,3,16,112,112 (batch included)")
    p.add_argument("--bench", action="store_true",
                   help="per-layer and end-to-end latency (dense vs compiled; glibc then keeps freed "
                        "memory instead of mmap'ing large blocks, for a stable dense baseline)")  # fmt: skip
    p.add_argument(
        "--repeats", type=_int(1), default=10, help="timed runs per measurement (median)"
    )
    p.add_argument("--threads", type=_int(1), help="CPU threads (default: PyTorch's)")
    p.add_argument("--max-density", type=FRACTION, default=0.8,
                   help="layers denser than this stay dense (default 0.8)")  # fmt: skip
    p.add_argument("--onnx", metavar="OUT", help="also export the compiled model to ONNX")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "attack", help="attack a saved model and report success, distortion, queries"
    )
    _attack_arguments(p, "pgd", "fgsm, pgd, cw, ead, zoo, zo-signsgd, zo-adam", 200, "runs/attack")
    p.add_argument("--target-shift", type=_int(0), default=0,
                   help="targeted attack toward (label + shift) mod classes; 0: untargeted")  # fmt: skip
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "explain", help="explain attacks on a saved model: promotion/suppression, CAM, dissection"
    )
    _attack_arguments(p, "fgsm,pgd,cw,ead", "one attack or a comma-separated list", 100,
                      "runs/explain")  # fmt: skip
    p.add_argument("--layer", help="layer of the unit-level PSE (default: the final linear layer)")
    p.add_argument("--cam-layer", help="layer of Grad-CAM, sensitivity and dissection "
                   "(default: the last feature map)")  # fmt: skip
    p.add_argument("--concepts", help="a Broden folder, or 'synthetic' (RGB models): dissect")
    p.add_argument("--concept-images", type=_int(1), default=500, help="concept images to use")
    p.add_argument("--fraction", type=FRACTION, default=0.1, help="top-k share of pixels compared")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("gnn", help="topology attacks and min-max robust training of GNNs")
    p.add_argument("action", choices=["attack", "robust-train"])
    p.add_argument(
        "--dataset", default="cora", help="cora, citeseer, pubmed, synthetic:N, ogb:NAME"
    )
    p.add_argument("--data-root", help="folder with <Name>/raw (Planetoid) or ogbn_<name> (OGB)")
    p.add_argument("--model", default="gcn", choices=["gcn", "sage"])
    p.add_argument("--hidden", type=_int(1), default=16, help="hidden units")
    p.add_argument("--epochs", type=_int(1), default=200)
    p.add_argument("--lr", type=POSITIVE, default=0.01)
    p.add_argument("--attack", default="gta", help="evaluation attacks: pgd, pgd-cw, gta, zo-gta, "
                   "random, dice, pgd-features (comma-separated)")  # fmt: skip
    p.add_argument(
        "--budget",
        type=FRACTION,
        default=0.05,
        help="fraction in (0, 1] of the edges (topology) or of the nonzero features",
    )
    p.add_argument(
        "--mode",
        default="evasion",
        choices=["evasion", "poisoning"],
        help="attack: poisoning retrains a fresh model on the perturbed graph",
    )
    p.add_argument(
        "--inner",
        default="gta",
        help="robust-train: the inner maximisation "
        "attack(s), comma-separated (several are combined by --weighting)",
    )
    p.add_argument(
        "--weighting",
        default="minmax",
        choices=["minmax", "average"],
        help="robust-train with several inner attacks: min-max or uniform weights",
    )
    p.add_argument(
        "--inner-budget", type=FRACTION, help="robust-train: its budget (default --budget)"
    )
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("--resume", action="store_true")
    _add_overwrite(p)
    p.add_argument("--out", default="runs/gnn")
    p.set_defaults(func=cmd_gnn)

    p = sub.add_parser("tshirt", help="adversarial T-shirt patches against person detectors")
    p.add_argument("action", choices=["train", "eval"])
    p.add_argument(
        "--detector",
        default="hog",
        help="hog, cnn[:PATH], centernet, nanodet (COCO CNNs on whole photos; `make models`), "
        "yolo:PATH, faster-rcnn:PATH; several (comma-separated) make an ensemble",
    )
    p.add_argument("--ensemble", default="minmax", choices=["minmax", "average"])
    p.add_argument(
        "--zo",
        action="store_true",
        help="zeroth-order: train against the detector's outputs only (no gradients); with "
        "hog, OpenCV's own HOG detector",
    )
    p.add_argument("--rigid", action="store_true", help="no TPS cloth deformation (Thys et al.)")
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
    p.add_argument("--data", default=str(data_root() / "persons"),
                   help="manifest.csv + images/ (default: $EDGEGUARD_DATA/persons)")  # fmt: skip
    p.add_argument("--sources", default="pennfudan,inria", help="file-name prefixes to use")
    p.add_argument(
        "--held-out",
        type=_float(0.0, 1.0, open_min=True, open_max=True),
        default=0.3,
        help="share of photos held out for evaluation, in (0, 1)",
    )
    p.add_argument("--limit", type=_int(1), help="read at most this many photos")
    p.add_argument(
        "--shape",
        default="torso",
        choices=["torso", "square"],
        help="patch on the whole torso region (a shirt print) or the largest square in it",
    )
    p.add_argument("--scale", type=FRACTION, default=1.0, help="patch size / torso region, (0, 1]")
    p.add_argument("--size", help="patch pixels, N or HxW (default 80x56 torso, 64 square)")
    p.add_argument("--steps", type=_int(1), default=300)
    p.add_argument("--batch", type=_int(1), default=8)
    p.add_argument("--samples", type=_int(1), default=2, help="EOT draws per person and step")
    p.add_argument("--eval-samples", type=_int(1), default=4)
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading pickled detector modules (they run code when loaded)",
    )
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("--out", default="runs/tshirt")
    _add_overwrite(p)
    p.set_defaults(func=cmd_tshirt)

    p = sub.add_parser("demo", help="run the built-in demo and write an HTML report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds), for smoke tests")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, one line already printed)
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (
        EdgeguardError
    ) as err:  # a user's mistake; anything else is a bug and keeps its traceback
        # one line: multi-line hints (expected folder layouts) are joined
        print("error: " + " ".join(part.strip() for part in str(err).splitlines()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
