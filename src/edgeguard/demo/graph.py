"""Demo section: a GCN's topology attacked before and after min-max robust training."""

from __future__ import annotations

import logging
from pathlib import Path

from ..engine import TrainConfig, seed_everything
from ..report import Report, plots
from .settings import DemoContext, DemoSettings

log = logging.getLogger(__name__)


def graph_section(s: DemoSettings, out: Path, rep: Report) -> None:
    """Topology attacks on a GCN and min-max robust training (GTA inner maximisation)."""
    from ..attacks.graph import get_graph_attack
    from ..data.graphs import synthetic_graph
    from ..defenses.graph import robust_train
    from ..engine.graph import node_accuracy
    from ..models.graph import gcn

    rep.heading("Graph robustness: topology attacks and robust training")
    data = synthetic_graph(s.graph_nodes, seed=s.seed)
    cfg = TrainConfig(epochs=s.graph_epochs, lr=0.01, weight_decay=5e-4, scheduler="none")
    curves, times = {}, {}
    for label, inner in (("natural GCN", None), ("GTA-robust GCN", "gta")):
        seed_everything(s.seed)
        model = gcn(data.num_features, int(data.y.max()) + 1, hidden=16)
        attack = get_graph_attack("gta", budget=0.05, rounds=1) if inner else None
        log.info("graph: training the %s", label)
        hist = robust_train(model, data, attack, cfg, log_every=10**6)
        times[label] = sum(e["seconds"] for e in hist.epochs) / len(hist.epochs)
        model.eval()
        curves[label] = {0.0: node_accuracy(model, data)}
        for budget in s.graph_budgets:
            res = get_graph_attack("gta", budget=budget, rounds=10, seed=s.seed)(model, data)
            curves[label][budget] = node_accuracy(model, res.data)
    rep.paragraph(
        f"A 2-layer GCN on a synthetic graph ({data.num_nodes} nodes, "
        f"{data.edge_index.shape[1] // 2} edges, 5 communities, noisy features), trained "
        f"{s.graph_epochs} epochs naturally, and the same followed by {s.graph_epochs} epochs of "
        "min-max training over all nodes (pseudo-labels from the natural phase) whose inner "
        f"maximisation is GTA at 5% of the edges ({times['GTA-robust GCN']:.2f} s per epoch "
        f"against {times['natural GCN']:.3f} s), then attacked by GTA (evasion, test nodes) at "
        "each budget."
    )
    budgets = [0.0, *s.graph_budgets]
    rep.table(
        ["model", *[f"{100 * b:g}%" for b in budgets]],
        [(k, *[f"{100 * v[b]:.1f}%" for b in budgets]) for k, v in curves.items()],
    )
    plots.accuracy_vs_budget(
        curves, out / "graph_accuracy_vs_budget.png", "GTA attack on natural and robust GCNs"
    )
    rep.figure("graph_accuracy_vs_budget.png", "Test accuracy under GTA against the budget.")


def section(ctx: DemoContext) -> None:
    graph_section(ctx.settings, ctx.out, ctx.report)
