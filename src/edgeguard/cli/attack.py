"""``edgeguard attack``: attack a saved model and report success, distortion, queries."""

from __future__ import annotations

from ..errors import UsageError
from . import names
from .common import attack_arguments, build_attack, int_in, model_and_held_out, start_run


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="attack a saved model: success, distortion, queries")
    attack_arguments(p, "pgd", names.attacks(), 200, "runs/attack")
    p.add_argument(
        "--target-shift",
        type=int_in(0),
        default=0,
        help="targeted attack toward (label + shift) mod classes; 0: untargeted",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..engine.rundir import finish_run
    from ..report import plots

    model, x, y, _ = model_and_held_out(args)
    n = len(x)
    attack, settings = build_attack(args.attack, args)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if not correct.any():
        raise UsageError("the model misclassifies every selected input; nothing to attack")
    x, y = x[correct], y[correct]
    target = (y + args.target_shift) % model(x[:1]).shape[1] if args.target_shift else None
    out = start_run(args, "attack", (args.model,))
    res = attack.run(model, x, y, target)
    norm = getattr(attack, "norm", "linf")
    print(
        f"attack {args.attack} {settings} on {len(x)} correctly classified inputs "
        f"(clean accuracy {float(correct.float().mean()):.3f} on {n})"
    )
    print(f"success rate: {res.success_rate:.3f}")
    print(f"mean {norm} distortion (successful): {res.mean_distortion(norm):.4f}")
    print(f"mean queries: {float(res.queries.float().mean()):.1f}")
    path = plots.attack_grid(x, res.adversarial, out / f"{args.attack}_grid.png")
    print(f"image grid: {path}")
    finish_run(out)
    return 0
