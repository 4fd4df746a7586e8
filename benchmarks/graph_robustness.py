"""Graph robustness (issue 7): accuracy of a GCN under topology attacks (PGD with CE, CW, masked-CE and
probability-margin losses, GTA, ZO-GTA,
random, DICE, and PyG's PRBCD/GRBCD with the same budget) on Cora/CiteSeer, evasion, standard split,
plus the PGD feature-flip attack (budget: the same fraction of the nonzero features) and GTA
poisoning (retraining on the perturbed graph); min-max robust training (over all nodes with pseudo-labels,
attacked-validation selection) with PGD, GTA and ZO-GTA inner maximisation and a min-max combination of GTA and feature flips (clean and attacked accuracy,
seconds per epoch); and a scale run on a synthetic graph (time and peak memory).

    .venv/bin/python benchmarks/graph_robustness.py attacks --datasets cora citeseer --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/graph_robustness.py robust --datasets cora --seeds 0 1
    .venv/bin/python benchmarks/graph_robustness.py scale --nodes 1000000
    .venv/bin/python benchmarks/graph_robustness.py clean --datasets meta:cora meta:citeseer meta:polblogs
    .venv/bin/python benchmarks/graph_robustness.py metattack --datasets meta:cora --rates 0.05 0.1 0.2

Datasets: ``cora``, ``citeseer`` (Planetoid, standard split) or ``meta:NAME`` (the gnn-meta-attack
npz of ../shared/data/graphs: largest component, stratified 10/10/80 split with seed 15, as Pro-GNN).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgeguard.attacks.graph import Metattack, flip_pairs, get_graph_attack, poison, resolve_budget
from edgeguard.data.graph_npz import npz_graph, save_adjacency
from edgeguard.data.graphs import planetoid, synthetic_graph
from edgeguard.defenses.graph import robust_train
from edgeguard.engine import TrainConfig, seed_everything
from edgeguard.engine.graph import node_accuracy
from edgeguard.models.graph import gcn
from edgeguard.settings import data_root

ROOT = data_root() / "planetoid"
EVAL = {
    "PGD-CE": ("pgd", {"steps": 50}),
    "PGD-CW": ("pgd-cw", {"steps": 50}),
    "PGD-masked-CE": ("pgd", {"steps": 50, "loss": "masked-ce"}),
    "PGD-prob-margin": ("pgd", {"steps": 50, "loss": "prob-margin"}),
    "GTA": ("gta", {}),
    "ZO-GTA": ("zo-gta", {}),
    "random": ("random", {}),
    "DICE": ("dice", {}),
    "PGD-features": ("pgd-features", {"steps": 50}),
}


SPLIT_SEED = 15  # Pro-GNN's / DeepRobust's split seed for the npz graphs


def load(name: str, split: str = "stratified"):
    """``split`` for ``meta:`` graphs: ours or ``"deeprobust"`` (DeepRobust's / Pro-GNN's nodes)."""
    if name.startswith("meta:"):
        path = data_root() / "graphs" / f"{name[5:]}.npz"
        return npz_graph(path, seed=SPLIT_SEED, split=split)
    tmp = Path(tempfile.mkdtemp())
    proper = {"cora": "Cora", "citeseer": "CiteSeer"}[name]
    shutil.copytree(ROOT / proper, tmp / proper)
    return planetoid(tmp, name)


def emit(row: dict) -> None:
    """Print one result row as JSON (floats to 4 places) as soon as it is measured."""
    print(
        json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
        flush=True,
    )


def natural(data, seed, epochs=200, select="val"):
    seed_everything(seed)
    m = gcn(data.num_features, int(data.y.max()) + 1, hidden=16)
    robust_train(
        m,
        data,
        None,
        TrainConfig(epochs=epochs, lr=0.01, weight_decay=5e-4, scheduler="none"),
        log_every=10**6,
        select=select,
    )
    return m.eval()


def run_clean(args) -> list[dict]:
    """Clean GCN test accuracy, best-validation epoch against the last epoch."""
    rows = []
    for name in args.datasets:
        data = load(name, args.split)
        for seed in args.seeds:
            r = {"dataset": name, "seed": seed}
            for select in ("val", "loss-or-acc", "last"):
                r[f"clean ({select})"] = node_accuracy(natural(data, seed, select=select), data)
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def ce_loss(prediction, labels, idx_attack):
    """Cross-entropy over the attacked nodes, in PyG's attack-loss signature (PRBCD-CE: the
    same loss as PGD-CE, so the two optimisers are compared alone)."""
    return torch.nn.functional.cross_entropy(prediction[idx_attack], labels[idx_attack])


def pyg_attack(cls, model, data, budget, **kw):
    att = cls(model, block_size=250_000, log=False, **kw)
    ei, _ = att.attack(
        data.x,
        data.edge_index,
        data.y,
        budget=budget,
        idx_attack=data.test_mask.nonzero().squeeze(1),
    )
    d = data.clone()
    d.edge_index = ei
    return node_accuracy(model, d)


def run_attacks(args) -> list[dict]:
    from torch_geometric.contrib.nn import GRBCDAttack, PRBCDAttack

    peers = {
        "PRBCD": (PRBCDAttack, {}),
        "PRBCD-CE": (PRBCDAttack, {"loss": ce_loss}),
        "GRBCD": (GRBCDAttack, {}),
    }

    def wanted(label: str) -> bool:
        return not args.only or label in args.only

    rows = []
    for name in args.datasets:
        data = load(name, args.split)
        budget = resolve_budget(args.budget, data.edge_index.shape[1] // 2)
        for seed in args.seeds:
            m = natural(data, seed)
            r = {"dataset": name, "seed": seed, "clean": node_accuracy(m, data)}
            for label, (attack, kw) in EVAL.items():
                if not wanted(label):
                    continue
                res = get_graph_attack(attack, budget=args.budget, seed=seed, **kw)(m, data)
                r[label] = node_accuracy(m, res.data)
                r[f"{label} s"] = res.seconds
                r[f"{label} queries"] = res.queries
            for label, (cls, kw) in peers.items():
                if not wanted(label):
                    continue
                t0 = time.perf_counter()
                r[label] = pyg_attack(cls, m, data, budget, **kw)
                r[f"{label} s"] = time.perf_counter() - t0
            if wanted("GTA poisoning"):
                t0 = time.perf_counter()
                pois = poison(
                    get_graph_attack("gta", budget=args.budget, seed=seed),
                    lambda d=data: gcn(d.num_features, int(d.y.max()) + 1, hidden=16),
                    data,
                    TrainConfig(epochs=200, lr=0.01, weight_decay=5e-4, scheduler="none"),
                    seed=seed,
                )
                r["GTA poisoning"] = pois.poisoned
                r["GTA poisoning s"] = time.perf_counter() - t0
            emit(r)
            rows.append(r)
    return rows


# the inner attacks of each robust training (a list: the min-max game over several attacks)
INNER = {
    "natural": None,
    "PGD": ("pgd", {"steps": 10, "samples": 5}),
    "GTA": ("gta", {"rounds": 1}),
    "ZO-GTA": ("zo-gta", {"rounds": 1, "q": 20}),
    "GTA+features minmax": [
        ("gta", {"rounds": 1}),
        ("pgd-features", {"steps": 10, "samples": 5}),
    ],
}


def inner_attacks(label: str, budget: float, seed: int, steps: int | None = None):
    """The attack objects of training ``label`` (None: natural training); ``steps`` overrides
    the gradient steps of its PGD attacks."""
    spec = INNER[label]
    specs = spec if isinstance(spec, list) else [spec] if spec else []
    attacks = []
    for a, kw in specs:
        if steps and "steps" in kw:
            kw = {**kw, "steps": steps}
        attacks.append(get_graph_attack(a, budget=budget, seed=seed, **kw))
    return attacks or None


def run_robust(args) -> list[dict]:
    rows = []
    for name in args.datasets:
        data = load(name, args.split)
        for seed in args.seeds:
            for label in INNER:
                if args.trainings and label not in args.trainings:
                    continue
                seed_everything(seed)
                m = gcn(data.num_features, int(data.y.max()) + 1, hidden=16)
                attack = inner_attacks(label, args.budget, seed, args.inner_steps)
                hist = robust_train(
                    m,
                    data,
                    attack,
                    TrainConfig(epochs=args.epochs, lr=0.01, weight_decay=5e-4, scheduler="none"),
                    log_every=10**6,
                    select=args.select if attack else "val",
                    cover=args.cover,
                )
                m.eval()
                r = {
                    "dataset": name,
                    "seed": seed,
                    "training": label,
                    "cover": args.cover,
                    "select": args.select,
                    "inner steps": args.inner_steps,
                    "threads": torch.get_num_threads(),
                    "s/epoch": statistics.mean(e["seconds"] for e in hist.epochs),
                    "clean": node_accuracy(m, data),
                }
                for ev in ("PGD-CE", "GTA", "PGD-features"):
                    a, kw = EVAL[ev]
                    r[ev] = node_accuracy(
                        m, get_graph_attack(a, budget=args.budget, seed=seed, **kw)(m, data).data
                    )
                emit(r)
                rows.append(r)
    return rows


POISONED_ROWS = {"GTA": "GTA-RT", "GTA+features minmax": "min-max RT"}


def run_metattack(args) -> list[dict]:
    """Metattack poisoning (Meta-Self, our implementation): one greedy run to the largest rate on
    a surrogate GCN (``--attack-seed``, default 0); the first k flips are the attack at each
    smaller rate.  Each poisoned adjacency is saved (``--adjacency`` input of ``edgeguard gnn``),
    then the GCNs of ``--trainings`` (default: natural and GTA-robust) are trained on it with each
    seed and tested on it."""
    trainings = args.trainings or ["natural", "GTA"]
    rows = []
    out = Path(args.out)
    for name in args.datasets:
        data = load(name, args.split)
        surrogate = natural(data, args.attack_seed)
        top = max(args.rates)
        t0 = time.perf_counter()
        res = Metattack(
            top,
            flips_per_step=args.flips_per_step,
            seed=args.attack_seed,
            self_training=args.self_training,
            reinit=args.reinit,
        )(surrogate, data)
        attack_s = time.perf_counter() - t0
        print(f"{name}: Metattack {res.num_flips} flips in {attack_s:.0f} s", flush=True)
        for rate in sorted(args.rates):
            k = resolve_budget(rate, data.edge_index.shape[1] // 2)
            poisoned = flip_pairs(data, res.flips[:, :k])
            slug = name.replace(":", "_")
            tag = f"_seed{args.attack_seed}" if args.attack_seed else ""
            save_adjacency(poisoned, out / f"{slug}_meta_{rate:g}{tag}.npz")
            evasion = node_accuracy(surrogate, poisoned)
            for seed in args.seeds:
                r = {"dataset": name, "rate": rate, "seed": seed, "flips": k}
                r["attack seed"] = args.attack_seed
                r["surrogate (evasion)"] = evasion
                if "natural" in trainings:
                    r["GCN"] = node_accuracy(natural(poisoned, seed), poisoned)
                for label in (t for t in trainings if t != "natural"):
                    seed_everything(seed)
                    m = gcn(data.num_features, int(data.y.max()) + 1, hidden=16)
                    robust_train(
                        m,
                        poisoned,
                        inner_attacks(label, args.budget, seed, args.inner_steps),
                        TrainConfig(
                            epochs=args.epochs, lr=0.01, weight_decay=5e-4, scheduler="none"
                        ),
                        log_every=10**6,
                        select=args.select,
                        cover=args.cover,
                    )
                    r[POISONED_ROWS.get(label, f"{label}-RT")] = node_accuracy(m.eval(), poisoned)
                r["attack s"] = attack_s
                emit(r)
                rows.append(r)
    return rows


def run_scale(args) -> list[dict]:
    t0 = time.perf_counter()
    data = synthetic_graph(args.nodes, num_test=10_000, seed=0)
    t_gen = time.perf_counter() - t0
    m = natural(data, 0, epochs=args.epochs)
    t_train = time.perf_counter() - t0 - t_gen
    clean = node_accuracy(m, data)
    res = get_graph_attack("gta", budget=0.01, rounds=20, max_candidates=4_000_000)(m, data)
    attacked = node_accuracy(m, res.data)
    t1 = time.perf_counter()
    hist = robust_train(
        m,
        data,
        get_graph_attack("gta", budget=0.01, rounds=1, max_candidates=4_000_000),
        TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, scheduler="none"),
    )
    row = {
        "nodes": data.num_nodes,
        "edges": data.edge_index.shape[1] // 2,
        "generate s": t_gen,
        "natural training s": t_train,
        "clean": clean,
        "GTA 1% flips": res.num_flips,
        "GTA 1% s": res.seconds,
        "GTA 1% acc": attacked,
        "robust epoch s": time.perf_counter() - t1,
        "robust epoch attack s": hist.epochs[0]["attack_seconds"],
        "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print(json.dumps(row), flush=True)
    return [row]


def summarize(paths: list[Path]) -> None:
    """:func:`print_summary` of the rows of several runs (split runs combined; a (dataset,
    training, seed) present twice is counted once, the later file winning)."""
    if not paths:
        raise SystemExit("summarize needs --inputs FILE [FILE ...]")
    rows: dict[tuple, dict] = {}
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"no such result file: {p}")
        text = p.read_text()
        recs = (
            json.loads(text)
            if p.suffix == ".json"
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
        for r in recs:
            rows[(r["dataset"], r.get("training"), r.get("rate"), r["seed"])] = r
    print_summary(list(rows.values()))


def print_summary(rows: list[dict]) -> None:
    """Markdown rows per (dataset, training): mean ± std over seeds, accuracies in %."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"])):
        label = r.get("training") or (f"Metattack {100 * r['rate']:g}%" if "rate" in r else None)
        groups.setdefault((r["dataset"], label), []).append(r)
    for (ds, tr), rs in groups.items():
        keys = [
            k
            for k in rs[0]
            if k
            not in (
                "dataset",
                "training",
                "seed",
                "threads",
                "cover",
                "select",
                "rate",
                "flips",
                "inner steps",
                "attack seed",
            )
            and not k.endswith((" s", " queries"))
        ]
        cells = []
        for k in keys:
            vals = [r[k] for r in rs if isinstance(r.get(k), int | float)]
            scale = 1 if k == "s/epoch" else 100
            sd = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
            cells.append(
                f"{statistics.mean(vals) * scale:.2f} ± {sd:.2f}"
                if k == "s/epoch"
                else f"{statistics.mean(vals) * scale:.1f} ± {sd:.1f}"
            )
        label = f"{ds} ({len(rs)})" + (f" | {tr}" if tr else "")
        print(f"| {label} | " + " | ".join(cells) + " |   <- " + ", ".join(keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "what", choices=["attacks", "robust", "scale", "clean", "metattack", "summarize"]
    )
    ap.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.2],
        help="metattack: poisoning rates (fractions of the edges)",
    )
    ap.add_argument(
        "--self-training",
        choices=["model", "linear"],
        default="model",
        help="metattack: who labels the unlabelled nodes (the natural GCN, or a linearised GCN as in "
        "the reference code)",
    )
    ap.add_argument(
        "--reinit",
        action="store_true",
        help="metattack: draw the surrogate's initial weights anew for every meta-gradient",
    )
    ap.add_argument(
        "--attack-seed",
        type=int,
        default=0,
        help="metattack: seed of the surrogate GCN and of the attack (one poisoned graph per seed)",
    )
    ap.add_argument(
        "--flips-per-step",
        type=int,
        default=1,
        help="metattack: pairs flipped per meta-gradient (1: the paper)",
    )
    ap.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument(
        "--epochs", type=int, default=100, help="robust: training epochs; scale: natural"
    )
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument(
        "--trainings",
        nargs="+",
        default=None,
        help="robust: only these rows; metattack: the trainings on each poisoned graph (default: "
        "natural and GTA)",
        choices=["natural", "PGD", "GTA", "ZO-GTA", "GTA+features minmax"],
    )
    ap.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        help="robust, metattack: gradient steps of the PGD inner attacks (default: as in INNER)",
    )
    ap.add_argument(
        "--cover",
        choices=["all", "train"],
        default="all",
        help="robust: the min-max game over all nodes (pseudo-labels) or the training nodes",
    )
    ap.add_argument(
        "--select",
        choices=["val", "attacked-val", "last"],
        default="attacked-val",
        help="robust: model selection of the robust trainings (natural: always val)",
    )
    ap.add_argument(
        "--split",
        choices=["stratified", "deeprobust"],
        default="stratified",
        help="meta: datasets: our stratified split or DeepRobust's exact one (seed 15 both)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="attacks: only these columns (e.g. PGD-CE PRBCD PRBCD-CE GRBCD 'GTA poisoning')",
    )
    ap.add_argument("--out", default="runs/bench/graph")
    ap.add_argument(
        "--inputs",
        nargs="+",
        type=Path,
        default=[],
        help="summarize: result files (.json lists or .jsonl rows) of earlier runs",
    )
    args = ap.parse_args()
    if args.what == "summarize":
        summarize(args.inputs)
        return
    runs = {
        "attacks": run_attacks,
        "robust": run_robust,
        "scale": run_scale,
        "clean": run_clean,
        "metattack": run_metattack,
    }
    rows = runs[args.what](args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.what}.json").write_text(json.dumps(rows, indent=1))
    if args.what != "scale":  # the scale run printed its single row already
        print_summary(rows)


if __name__ == "__main__":
    main()
