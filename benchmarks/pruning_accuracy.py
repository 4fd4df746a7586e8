"""Accuracy against FLOPs reduction for every pruning method x scheme, against Torch-Pruning.

For each seed: train the dense model; for each method, scheme and FLOPs target, regularise (methods
that have a regularisation phase), hard prune and fine-tune with the same budget; the peer is
Torch-Pruning's channel pruning with magnitude importance (pruning ratio found by bisection to meet the
same target under edgeguard's MAC counter, which sees the physically smaller model), fine-tuned with the
same budget.  Prints a markdown table (mean +- std over seeds), writes results JSON and a PNG plot.

    .venv/bin/python benchmarks/pruning_accuracy.py --task digits --seeds 0 1 2
    .venv/bin/python benchmarks/pruning_accuracy.py --task c3d --seeds 0 1 2 --targets 3.6   # slow

Torch-Pruning is optional (``pip install torch-pruning==1.6.1``); without it the peer rows are skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgeguard.data import SyntheticMovingShapes, digits
from edgeguard.demo import materialise
from edgeguard.engine import TrainConfig, evaluate, fit, seed_everything
from edgeguard.models import build, count_flops
from edgeguard.prune import get_pruner, run_pruning

# Each method's regularisation optimiser as documented for it: RT3D trains its reweighted penalty
# with SGD (with Adam the normalised penalty gradient either does nothing or shrinks every unit);
# the fine-tuning budget is the same for every method and for the peer.
REG_OVERRIDES = {"reweighted": {"optimizer": "sgd", "lr": 1e-2}}


def task_setup(task: str, seed: int):
    """(model factory, train set, val set, input shape, dense config, reg config, finetune config)."""
    if task == "digits":
        train, val = digits(True), digits(False)
        shape = (1, 1, 8, 8)

        def factory():
            return build("digits_cnn")

        dense = TrainConfig(epochs=12, batch_size=32, lr=3e-3, seed=seed, progress=False)
        reg = TrainConfig(epochs=10, batch_size=32, lr=1e-3, seed=seed, progress=False)
        ft = TrainConfig(epochs=6, batch_size=32, lr=1e-3, seed=seed, progress=False)
        return factory, train, val, shape, dense, reg, ft
    if task == "c3d":
        train = materialise(SyntheticMovingShapes(2400, seed=0))
        val = materialise(SyntheticMovingShapes(600, seed=1))
        shape = (1, 3, 16, 32, 32)

        def factory():
            return build(
                "c3d",
                num_classes=12,
                width=0.125,
                clip_size=[16, 32, 32],
                dropout=0.2,
                batch_norm=True,
            )

        dense = TrainConfig(epochs=12, lr=5e-4, warmup_epochs=1.0, seed=seed, progress=False)
        reg = TrainConfig(epochs=4, lr=2e-4, seed=seed, progress=False)
        ft = TrainConfig(epochs=3, lr=2e-4, seed=seed, progress=False)
        return factory, train, val, shape, dense, reg, ft
    raise SystemExit(f"unknown task {task!r}")


def torch_pruning_channels(model, shape, target: float, ignored=None):
    """Torch-Pruning channel pruning (L2 magnitude importance, local uniform ratio) to ``target``x
    fewer MACs: (the physically pruned model, the ratio found by bisection).  ``ignored(net)``: the
    modules of a copy left whole (default: the classifier, the last Linear)."""
    import torch_pruning as tp

    example = torch.zeros(shape)
    dense = count_flops(model, shape).dense_macs

    def classifier(net):
        return [[m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]]

    def pruned(ratio: float):
        net = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            net,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=(ignored or classifier)(net),
        )
        pruner.step()
        return net

    lo, hi = 0.0, 0.9  # at 0.99 Torch-Pruning leaves layers whole rather than empty them
    if dense / count_flops(pruned(hi), shape).dense_macs < target:
        raise RuntimeError(f"Torch-Pruning cannot reach {target}x")
    for _ in range(14):
        mid = (lo + hi) / 2
        if dense / count_flops(pruned(mid), shape).dense_macs >= target:
            hi = mid
        else:
            lo = mid
    return pruned(hi), hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits", choices=["digits", "c3d"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", type=float, nargs="+", default=[2.0, 2.5, 3.6, 5.0, 8.0])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["magnitude", "reweighted", "admm", "primal-proximal", "torch-pruning"],
    )
    ap.add_argument("--schemes", nargs="+", default=["filter", "kgs"])
    ap.add_argument("--out", default="runs/bench/pruning_accuracy")
    ap.add_argument(
        "--summarise", metavar="RESULTS_JSON", help="only print the table and plot of saved results"
    )
    args = ap.parse_args()
    if args.summarise:
        results = json.loads(Path(args.summarise).read_text())
        args.seeds = sorted({r["seed"] for r in results})
        summarise(results, args, Path(args.out), 0.0)
        return
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        seed_everything(seed)
        factory, train, val, shape, dense_cfg, reg, ft = task_setup(args.task, seed)
        model = factory()
        fit(model, train, val, dense_cfg)
        dense_acc = evaluate(model, val)["accuracy"]
        results.append(
            {
                "seed": seed,
                "method": "dense",
                "scheme": "-",
                "target": 1.0,
                "reduction": 1.0,
                "accuracy": dense_acc,
            }
        )
        print(
            f"seed {seed}: dense {100 * dense_acc:.2f}%  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        for target in args.targets:
            for method in args.methods:
                if method == "torch-pruning":
                    combos = [("channel",)]
                elif method == "primal-proximal":
                    combos = [("filter+column",)]
                else:
                    combos = [(s,) for s in args.schemes]
                for (scheme,) in combos:
                    seed_everything(seed)
                    try:
                        if method == "torch-pruning":
                            net, _ = torch_pruning_channels(model, shape, target)
                            fit(net, train, val, ft)
                            acc = evaluate(net, val)["accuracy"]
                            red = (
                                count_flops(model, shape).dense_macs
                                / count_flops(net, shape).dense_macs
                            )
                        else:
                            pruner = get_pruner(method, scheme)
                            method_reg = REG_OVERRIDES.get(method, {})
                            res = run_pruning(
                                model,
                                pruner,
                                train,
                                val,
                                shape,
                                flops_reduction=target,
                                regularize=replace(reg, **method_reg)
                                if pruner.regularizes
                                else None,
                                finetune=ft,
                            )
                            acc, red = res.accuracy_finetuned, res.flops.reduction
                    except (ImportError, RuntimeError, ValueError) as err:
                        print(f"  skip {method}/{scheme} at {target}x: {err}", flush=True)
                        continue
                    results.append(
                        {
                            "seed": seed,
                            "method": method,
                            "scheme": scheme,
                            "target": target,
                            "reduction": red,
                            "accuracy": acc,
                        }
                    )
                    print(
                        f"  {target:>4}x {method:16s} {scheme:14s} {100 * acc:6.2f}%  (reached {red:.2f}x)",
                        flush=True,
                    )
        (out / "results.json").write_text(json.dumps(results, indent=1))
    summarise(results, args, out, time.perf_counter() - t0)


def summarise(results: list[dict], args, out: Path, seconds: float) -> None:
    rows: dict[tuple, list[float]] = {}
    for r in results:
        rows.setdefault((r["method"], r["scheme"], r["target"]), []).append(100 * r["accuracy"])
    print(
        f"\n## {args.task}: top-1 accuracy (%) after fine-tuning, mean +- std over seeds {args.seeds} ({seconds:.0f} s)\n"
    )
    targets = sorted({k[2] for k in rows})
    print("| method | scheme | " + " | ".join(f"{t:g}x" for t in targets) + " |")
    print("|---|---|" + "---|" * len(targets))
    for key in sorted({(k[0], k[1]) for k in rows}, key=lambda k: (k[0] != "dense", k)):
        cells = []
        for t in targets:
            vals = rows.get((*key, t))
            if not vals:
                cells.append("-")
            else:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} +- {sd:.2f}")
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key in sorted({(k[0], k[1]) for k in rows if k[0] != "dense"}):
        ts = [t for t in targets if (*key, t) in rows]
        ax.errorbar(
            ts,
            [statistics.mean(rows[(*key, t)]) for t in ts],
            yerr=[statistics.stdev(rows[(*key, t)]) if len(rows[(*key, t)]) > 1 else 0 for t in ts],
            marker="o",
            capsize=3,
            label=f"{key[0]} / {key[1]}",
        )
    dense = [v for k, vs in rows.items() if k[0] == "dense" for v in vs]
    ax.axhline(statistics.mean(dense), color="k", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(targets, [f"{t:g}x" for t in targets])
    ax.set_xlabel("FLOPs reduction")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(out / f"{args.task}.png", dpi=110, bbox_inches="tight")
    print(f"\nplot: {out / f'{args.task}.png'}")


if __name__ == "__main__":
    main()
