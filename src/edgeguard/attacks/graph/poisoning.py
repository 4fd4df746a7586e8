"""Poisoning: the attacker perturbs the graph *before* training.  The perturbation is found by an
evasion attack on a surrogate trained on the clean graph (the setting of PyG's PRBCD/GRBCD poisoning
examples and of Zuegner et al.'s surrogate attacks), then a fresh model is trained on the perturbed
graph and tested on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...engine import TrainConfig, seed_everything
from ...engine.graph import fit_graph, node_accuracy
from .base import GraphAttack, GraphAttackResult


@dataclass
class PoisoningResult:
    """clean: test accuracy of a model trained and tested on the clean graph (the surrogate);
    evasion: the surrogate on the perturbed graph; poisoned: a model retrained on the perturbed
    graph, tested on it; attack: the surrogate attack's result; model: the retrained model;
    surrogate: the model trained on the clean graph (reusable for other attacks)."""

    clean: float
    evasion: float
    poisoned: float
    attack: GraphAttackResult
    model: nn.Module
    surrogate: nn.Module


def poison(
    attack: GraphAttack,
    make_model: Callable[[], nn.Module],
    data,
    config: TrainConfig | None = None,
    nodes: torch.Tensor | None = None,
    seed: int = 0,
    surrogate: nn.Module | None = None,
) -> PoisoningResult:
    """Poisoning attack with retraining.

    Args:
        attack: any graph attack (topology or features), run against the surrogate.
        make_model: returns a fresh untrained model (called twice: surrogate and victim, both
            initialised from ``seed``).
        config: training settings of both models (default: :func:`fit_graph`'s).
        nodes: the nodes whose accuracy is attacked (default: ``data.test_mask``).
        surrogate: a surrogate already trained on ``data`` this way (e.g. ``result.surrogate`` of an
            earlier call), to attack several times without training it again.
    """
    if surrogate is None:
        seed_everything(seed)
        surrogate = make_model()
        fit_graph(surrogate, data, config, log_every=10**9)
    res = attack.run(surrogate, data, nodes=nodes)
    seed_everything(seed)
    victim = make_model()
    fit_graph(victim, res.data, config, log_every=10**9)
    mask = data.test_mask if nodes is None else nodes
    return PoisoningResult(
        node_accuracy(surrogate, data, mask),
        node_accuracy(surrogate, res.data, mask),
        node_accuracy(victim, res.data, mask),
        res,
        victim,
        surrogate,
    )
