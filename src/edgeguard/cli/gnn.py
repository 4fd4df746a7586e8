"""``edgeguard gnn``: topology attacks and min-max robust training of GNNs."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import names
from .common import FRACTION, POSITIVE, add_overwrite, int_in, start_run


def add_parser(sub) -> None:
    p = sub.add_parser("gnn", help="topology attacks and min-max robust training of GNNs")
    p.add_argument("action", choices=["attack", "robust-train"])
    p.add_argument(
        "--dataset",
        default="cora",
        help="cora, citeseer, pubmed (Planetoid), synthetic:N, ogb:NAME, or a gnn-meta-attack "
        "PATH.npz (Nettack/Metattack/Pro-GNN data: largest component, stratified 10/10/80 split)",
    )
    p.add_argument(
        "--data-root",
        help="folder with <Name>/raw (Planetoid), ogbn_<name> (OGB) or the .npz files",
    )
    p.add_argument(
        "--adjacency",
        help="with a .npz dataset: a pre-attacked adjacency over its largest component "
        "(npz: adj_* or SciPy's save_npz layout)",
    )
    p.add_argument("--model", default="gcn", choices=["gcn", "sage"])
    p.add_argument("--hidden", type=int_in(1), default=16, help="hidden units")
    p.add_argument("--epochs", type=int_in(1), default=200)
    p.add_argument("--lr", type=POSITIVE, default=0.01)
    p.add_argument(
        "--attack",
        default="gta",
        help=f"evaluation attacks, comma-separated: {names.graph_attacks()}",
    )
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
    p.add_argument(
        "--cover",
        default="all",
        choices=["all", "train"],
        help="robust-train: the min-max game over all nodes (natural phase, then pseudo-labels on "
        "the unlabelled nodes; Xu et al.) or over the labelled training nodes only",
    )
    p.add_argument(
        "--select",
        default="val",
        choices=["val", "attacked-val", "last"],
        help="which epoch's weights to keep: best validation accuracy, best validation accuracy "
        "under the inner attack (robust-train), or the last",
    )
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--resume", action="store_true")
    add_overwrite(p)
    p.add_argument("--out", default="runs/gnn")
    p.set_defaults(func=run)


def _gnn_setup(args):
    """(graph, model factory ``build(data)``, train config) from the ``gnn`` options."""
    from ..data.graphs import load_graph
    from ..engine import TrainConfig, seed_everything
    from ..models import build as build_model

    seed_everything(args.seed)
    options = {}
    if args.adjacency:
        if not args.dataset.endswith(".npz"):
            raise UsageError("--adjacency goes with a gnn-meta-attack .npz --dataset")
        options["adjacency"] = args.adjacency
    data = load_graph(args.dataset, root=args.data_root, seed=args.seed, **options)
    classes = int(data.y.max()) + 1
    arch = {"gcn": "gcn", "sage": "graphsage"}[args.model]

    def build(data):
        return build_model(
            arch, in_features=data.num_features, num_classes=classes, hidden=args.hidden
        )

    cfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=5e-4, scheduler="none", seed=args.seed
    )
    print(
        f"{args.dataset}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges, "
        f"{data.num_features} features, {classes} classes; model {args.model}"
    )
    return data, build, cfg


def _graph_attacks(names: str, budget: float, seed: int) -> dict:
    from ..attacks.graph import get_graph_attack

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
    return (
        f"{name}: accuracy {accuracy:.4f} after {what}, budget {res.budget}, "
        f"{res.queries} model evaluations, {res.seconds:.1f} s"
    )


def run(args) -> int:
    from ..attacks.graph import poison
    from ..defenses.graph import robust_train
    from ..engine.graph import node_accuracy
    from ..engine.rundir import finish_run

    if not 0 < args.budget <= 1:
        raise UsageError(f"--budget is a fraction of edges in (0, 1], got {args.budget}")
    if args.mode == "poisoning" and args.action != "attack":
        raise UsageError("--mode poisoning goes with the attack action (it retrains the model)")
    data, build, cfg = _gnn_setup(args)
    attacks = _graph_attacks(args.attack, args.budget, args.seed)
    if args.mode == "poisoning":
        surrogate = None  # trained once, attacked by each attack
        for name, attack in attacks.items():
            res = poison(
                attack, lambda: build(data), data, cfg, seed=args.seed, surrogate=surrogate
            )
            surrogate = res.surrogate
            print(
                f"clean test accuracy: {res.clean:.4f}; surrogate on the perturbed graph "
                f"(evasion): {res.evasion:.4f}"
            )
            print(
                _describe_graph_attack(
                    f"{name} (poisoning, retrained)", attack, res.attack, data, res.poisoned
                )
            )
        return 0
    model = build(data)
    if args.action == "attack":
        robust_train(model, data, None, cfg, log_every=max(1, args.epochs // 5), select=args.select)
    else:
        budget = args.budget if args.inner_budget is None else args.inner_budget
        inner = _graph_attacks(args.inner, budget, args.seed)
        out = start_run(args, "gnn robust-train")
        hist = robust_train(
            model,
            data,
            list(inner.values()),
            cfg,
            checkpoint_dir=out,
            resume=args.resume,
            log_every=max(1, args.epochs // 10),
            weighting=args.weighting,
            cover=args.cover,
            select=args.select,
        )
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
        from ..modelfile import save_model

        out = save_model(
            model,
            Path(args.out) / "model.safetensors",
            extra={"dataset": args.dataset, "inner": args.inner, "weighting": args.weighting},
        )
        print(f"weights: {out}")
        finish_run(out.parent)
    return 0
