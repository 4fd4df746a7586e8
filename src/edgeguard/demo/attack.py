"""Demo section: white-box and black-box attacks on the digits CNN."""

from __future__ import annotations

from pathlib import Path

import torch

from ..report import Report, plots
from .settings import DemoContext, DemoSettings


def attack_section(
    s: DemoSettings, out: Path, rep: Report, model: torch.nn.Module, quick: bool
) -> None:
    """White-box and black-box attacks on the demo's digits CNN."""
    from ..attacks import FGSM, PGD
    from ..attacks.zo import ZOSignSGD
    from ..data import digits

    rep.heading("Adversarial attacks on the digits CNN")
    model.eval()
    x, y = digits(False).tensors
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    n = 20 if quick else 100
    x, y = x[ok][:n], y[ok][:n]
    eps = 0.1
    attacks = {
        "FGSM (L-inf)": FGSM(eps=eps),
        "PGD-20 (L-inf, random start)": PGD(eps=eps, steps=20),
        "PGD-20 (L2, eps 0.5)": PGD(eps=0.5, steps=20, norm="l2"),
        "ZO-signSGD (black box, q=20)": ZOSignSGD(
            eps=eps, lr=0.01, q=20, max_queries=200 if quick else 2000
        ),
    }
    rows, grid = [], None
    for name, attack in attacks.items():
        res = attack.run(model, x, y)
        rows.append(
            (
                name,
                f"{100 * res.success_rate:.1f}%",
                res.mean_distortion("linf"),
                res.mean_distortion("l2"),
                float(res.queries.float().mean()),
            )
        )
        if name.startswith("PGD-20 (L-inf"):
            grid = res.adversarial
    rep.paragraph(
        f"{len(x)} held-out digits the model classifies correctly, untargeted, "
        f"L-inf eps {eps} unless stated (pixels in [0, 1])."
    )
    rep.table(
        ["attack", "success", "mean L-inf (successful)", "mean L2 (successful)", "mean queries"],
        rows,
    )
    plots.attack_grid(x, grid, out / "attack_grid.png")
    rep.figure("attack_grid.png", "PGD-20: clean digits, adversarial digits, perturbations.")


def section(ctx: DemoContext) -> None:
    attack_section(ctx.settings, ctx.out, ctx.report, ctx.made["digits_model"], ctx.quick)
