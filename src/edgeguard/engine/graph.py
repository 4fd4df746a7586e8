"""Full-batch training of node classifiers on one graph (PyG ``Data``), with an optional inner
maximisation per epoch (min-max robust training), model selection on the validation nodes (the
best epoch's weights are kept, as every published GCN figure does), optional early stopping,
per-epoch log lines with the time split, atomic checkpoints and resume."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..validation import check_int
from .checkpoint import load_checkpoint, save_checkpoint
from .train import History, TrainConfig, _make_optimizer, _make_scheduler, _restore, _state

log = logging.getLogger(__name__)
Combine = Callable[[torch.Tensor], torch.Tensor]


def graph_forward(model: nn.Module, data) -> torch.Tensor:
    """``model(x, edge_index, edge_weight)`` logits ``[N, classes]`` (edge weights when present)."""
    return model(data.x, data.edge_index, getattr(data, "edge_weight", None))


@torch.no_grad()
def eval_logits(model: nn.Module, data) -> torch.Tensor:
    """:func:`graph_forward` in eval mode, without gradients; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        return graph_forward(model, data)
    finally:
        model.train(was)


def node_metrics(model: nn.Module, data, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """(cross-entropy, accuracy) on the nodes of ``mask`` (default ``data.test_mask``), model in
    eval mode."""
    mask = data.test_mask if mask is None else mask
    out, y = eval_logits(model, data)[mask], data.y[mask]
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def node_accuracy(model: nn.Module, data, mask: torch.Tensor | None = None) -> float:
    """Accuracy on the nodes of ``mask`` (default ``data.test_mask``), model in eval mode."""
    return node_metrics(model, data, mask)[1]


def fit_graph(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    perturb: Callable[[nn.Module, object], object] | None = None,
    combine: Combine | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log_every: int = 10,
    select: str = "val",
    patience: int | None = None,
    labels: torch.Tensor | None = None,
    train_nodes: torch.Tensor | None = None,
    val_perturb: Callable[[nn.Module, object], object] | None = None,
) -> History:
    """Train on ``data.train_mask`` with cross-entropy, one full-batch step per epoch.

    Args:
        labels / train_nodes: the targets ``[N]`` (int64) and the nodes (bool ``[N]``) of the
            training loss, default ``data.y`` and ``data.train_mask`` (self-training: pseudo-labels
            on unlabelled nodes).  Validation always uses ``data.y``.
        perturb: ``perturb(model, data) -> data'``, the inner maximisation of min-max training
            (see :func:`edgeguard.defenses.graph.robust_train`); the step is taken on ``data'``.
            It may return a list of graphs (several attacks); their training losses ``[K]`` are
            then combined by ``combine`` (default: their mean).
        combine: ``combine(losses [K]) -> loss``, e.g. min-max weights over the K graphs; its
            ``weights`` (if any) are logged and its ``state_dict`` checkpointed.
        checkpoint_dir / resume: ``last.pt`` written atomically every ``log_every`` epochs and at the
            end; ``resume`` continues from it.
        select: which epoch's weights the model ends with: ``"val"`` the best validation accuracy
            on the clean graph (ties: lower validation loss, then the earlier epoch),
            ``"attacked-val"`` the best validation accuracy under attack (the worst over the
            graphs of ``val_perturb(model, data)``, by default the epoch's perturbed graphs; after
            the step; robust training), ``"loss-or-acc"`` the last epoch that set a record of
            either the lowest validation loss or the highest validation accuracy (DeepRobust's /
            Pro-GNN's GCN), ``"last"`` the last epoch.  Without validation nodes the last epoch
            is kept.
        patience: stop when the selection score has not improved for this many epochs (None:
            train all ``config.epochs``).
    History entries: epoch, train_loss, train_acc, val_loss and val_acc (clean graph),
    attacked_val_acc (``"attacked-val"``), seconds, attack_seconds; ``history.best_epoch``.
    """
    if select not in SELECTS:
        raise ConfigError(f"select must be one of {SELECTS}, got {select!r}")
    if select == "attacked-val" and perturb is None:
        raise ConfigError("select='attacked-val' needs perturb (robust training)")
    if patience is not None:
        check_int(patience, "patience", error=ConfigError)
    cfg = config or TrainConfig(epochs=200, lr=0.01, weight_decay=5e-4, scheduler="none")
    cfg.validate()
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg)
    history, start, best = History(), 0, None
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt)
        _restore(model, optimizer, scheduler, state, ckpt)
        if "combine" in state and hasattr(combine, "load_state_dict"):
            combine.load_state_dict(state["combine"])
        history.epochs, start = list(state.get("history", [])), int(state["epoch"])
        best = state.get("best")
        if state.get("stopped"):  # stopped early: nothing left to train
            start = cfg.epochs
        log.info("resumed from %s at epoch %d/%d", ckpt, start, cfg.epochs)
    train = data.train_mask if train_nodes is None else train_nodes
    targets = data.y if labels is None else labels
    if targets.shape != data.y.shape or train.shape != data.train_mask.shape:
        raise ConfigError(
            f"labels and train_nodes must have one entry per node ({data.num_nodes}), got "
            f"{tuple(targets.shape)} and {tuple(train.shape)}"
        )
    val = getattr(data, "val_mask", None)
    selecting = select != "last" and val is not None and bool(val.any())
    stopped = False
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        graph = data
        if perturb is not None:
            graph = perturb(model, data)
        t_attack = time.perf_counter() - t0
        model.train()
        optimizer.zero_grad(set_to_none=True)
        graphs = _as_list(graph)
        losses = []
        for g in graphs:
            out = graph_forward(model, g)
            losses.append(
                F.cross_entropy(out[train], targets[train], label_smoothing=cfg.label_smoothing)
            )
        losses = torch.stack(losses)
        loss = losses.mean() if combine is None or len(graphs) == 1 else combine(losses)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss.item(),
            "train_acc": float((out[train].argmax(1) == targets[train]).float().mean()),
        }
        if val is not None and val.any():
            metrics["val_loss"], metrics["val_acc"] = node_metrics(model, data, val)
        if select == "attacked-val" and selecting:
            judged = graphs if val_perturb is None else _as_list(val_perturb(model, data))
            metrics["attacked_val_acc"] = min(node_accuracy(model, g, val) for g in judged)
        if len(graphs) > 1:
            metrics["attack_losses"] = [round(float(v), 4) for v in losses.detach()]
            if getattr(combine, "weights", None) is not None:
                metrics["weights"] = [round(float(v), 4) for v in combine.weights]
        metrics["seconds"] = time.perf_counter() - t0
        metrics["attack_seconds"] = t_attack
        history.epochs.append(metrics)
        last = epoch + 1 == cfg.epochs
        if selecting:
            if select == "loss-or-acc":  # a new record of either: DeepRobust's GCN.fit rule
                loss_v, acc_v = metrics["val_loss"], metrics["val_acc"]
                key = [
                    min(loss_v, best["key"][0]) if best else loss_v,
                    max(acc_v, best["key"][1]) if best else acc_v,
                ]
                improved = best is None or loss_v < best["key"][0] or acc_v > best["key"][1]
            else:
                score = metrics["attacked_val_acc" if select == "attacked-val" else "val_acc"]
                key = [score, -metrics["val_loss"]]
                improved = best is None or key > best["key"]
            if improved:
                model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"epoch": epoch + 1, "key": key, "model": model_state}
            elif patience is not None and epoch + 1 - best["epoch"] >= patience:
                log.info(
                    "early stop at epoch %d: no better validation since epoch %d",
                    epoch + 1,
                    best["epoch"],
                )
                last = True
        if (epoch + 1) % log_every == 0 or last or epoch == start:
            log.info(
                "epoch %d/%d  %s",
                epoch + 1,
                cfg.epochs,
                "  ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in metrics.items()
                    if k != "epoch"
                ),
            )
            if ckpt is not None:
                state = _state(model, optimizer, scheduler, epoch + 1, history, cfg)
                if hasattr(combine, "state_dict"):
                    state["combine"] = combine.state_dict()
                if best is not None:
                    state["best"] = copy.deepcopy(best)
                state["stopped"] = stopped
                save_checkpoint(state, ckpt)
        if last:
            break
    if selecting and best is not None:
        model.load_state_dict(best["model"])
        history.best_epoch = best["epoch"]
        log.info("kept the weights of epoch %d (best validation)", best["epoch"])
    return history


SELECTS = ("val", "attacked-val", "loss-or-acc", "last")


def _as_list(graphs) -> list:
    """A perturbation's result as a list of graphs (one attack gives one graph)."""
    return list(graphs) if isinstance(graphs, list | tuple) else [graphs]
