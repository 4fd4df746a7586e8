"""Black-box attacks: success rate against mean queries (ZOO, ZO-signSGD, ZO-Adam, and torchattacks'
Square as the peer) on the digits CNN, untargeted L-inf; and PGD adversarial training's clean and PGD
accuracy against standard training.  Prints markdown tables, writes results JSON and a PNG plot.

    .venv/bin/python benchmarks/attacks.py --eps 0.2 --budgets 250 500 1000 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from edgeguard.attacks import PGD
from edgeguard.attacks.zo import ZOO, ZOAdam, ZOSignSGD
from edgeguard.data import digits
from edgeguard.defenses import adversarial_training, robust_accuracy
from edgeguard.engine import TrainConfig, evaluate, fit, seed_everything
from edgeguard.models import build


class Counting(nn.Module):
    """Counts the samples a peer library evaluates (its mean queries per attacked input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.samples = model, 0

    def forward(self, x):
        self.samples += len(x)
        return self.model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--at-epochs", type=int, default=8)
    ap.add_argument("--out", default="runs/bench/attacks")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    train, test = digits(True), digits(False)
    model = build("digits_cnn")
    fit(model, train, None, TrainConfig(epochs=12, lr=3e-3, progress=False))
    model.eval()
    x, y = test.tensors
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][: args.num], y[ok][: args.num]
    rows = []
    for budget in args.budgets:
        attacks = {
            "zo-signsgd": ZOSignSGD(eps=args.eps, lr=0.02, q=20, max_queries=budget),
            "zo-adam": ZOAdam(eps=args.eps, lr=0.02, q=20, max_queries=budget),
            "zoo": ZOO(eps=args.eps, lr=0.2, batch_coords=16, max_queries=budget),
        }
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            res = attack.run(model, x, y)
            rows.append(
                {
                    "attack": name,
                    "budget": budget,
                    "success": res.success_rate,
                    "mean_queries": float(res.queries.float().mean()),
                    "seconds": time.perf_counter() - t0,
                }
            )
        try:
            import torchattacks
        except ImportError:
            print("torchattacks not installed: the Square peer is skipped")
        else:
            counting = Counting(model).eval()
            sq = torchattacks.Square(
                counting,
                norm="Linf",
                eps=args.eps,
                n_queries=budget,
                n_restarts=1,
                loss="margin",
                seed=0,
            )
            counting.samples = 0
            t0 = time.perf_counter()
            adv = sq(x, y)
            with torch.no_grad():
                success = float((model(adv).argmax(1) != y).float().mean())
            rows.append(
                {
                    "attack": "square (torchattacks)",
                    "budget": budget,
                    "success": success,
                    "mean_queries": counting.samples / len(x),
                    "seconds": time.perf_counter() - t0,
                }
            )
        for r in rows[-4:]:
            print(
                f"budget {r['budget']:5d} {r['attack']:22s} success {100 * r['success']:5.1f}% "
                f"mean queries {r['mean_queries']:7.1f}",
                flush=True,
            )
    # adversarial training
    seed_everything(0)
    robust = build("digits_cnn")
    adversarial_training(
        robust,
        train,
        None,
        PGD(eps=0.1, steps=7, seed=None),
        TrainConfig(epochs=args.at_epochs, lr=3e-3, progress=False),
    )
    pgd = PGD(eps=0.1, steps=20)
    at = {
        "standard": {
            "clean": evaluate(model, test)["accuracy"],
            "pgd": robust_accuracy(model, test, pgd),
        },
        "PGD adversarial training": {
            "clean": evaluate(robust, test)["accuracy"],
            "pgd": robust_accuracy(robust, test, pgd),
        },
    }
    print("\n| attack | budget | success | mean queries |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['budget']} | {100 * r['success']:.1f}% | {r['mean_queries']:.1f} |"
        )
    print("\n| model | clean accuracy | PGD-20 accuracy (eps 0.1) |\n|---|---|---|")
    for k, v in at.items():
        print(f"| {k} | {100 * v['clean']:.1f}% | {100 * v['pgd']:.1f}% |")
    (out / "results.json").write_text(
        json.dumps({"zo": rows, "adversarial_training": at}, indent=1)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["attack"] for r in rows):
        rs = [r for r in rows if r["attack"] == name]
        ax.plot(
            [r["mean_queries"] for r in rs],
            [100 * r["success"] for r in rs],
            marker="o",
            label=name,
        )
    ax.set_xlabel("mean queries per input")
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"digits CNN, untargeted L-inf eps {args.eps}, {len(x)} inputs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "zo_success_vs_queries.png", dpi=110, bbox_inches="tight")
    print(f"plot: {out / 'zo_success_vs_queries.png'}")


if __name__ == "__main__":
    main()
