"""The graph-attack protocol and its building blocks.

``attack(model, data, target=None) -> GraphAttackResult``: ``model(x, edge_index, edge_weight)`` gives
node logits; ``data`` is an undirected PyG graph (both directions of every edge, no self-loops, no
duplicates); the attack flips at most ``budget`` node pairs (a fraction of the undirected edges in
(0, 1], or a number of flips >= 1) and returns a perturbed *copy* (the caller's graph is never
modified).  Evasion: the model is fixed; the attacked nodes are ``data.test_mask`` (or ``nodes=``);
``target=v`` makes a targeted attack on node v whose flips all touch v.

Flips are relaxed to continuous edge weights for gradient-based attacks: with ``s`` in [0, 1] per
candidate pair, an existing edge gets weight ``1 - s`` and a missing one ``s`` (the candidate pairs are
appended to the edge list with weight ``-s`` or ``+s``; message passing and degrees add duplicates up),
so no dense N x N matrix is ever built.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ... import validation
from .edges import check_graph, edge_keys, flip_pairs, pair_exists, resolve_budget
from .errors import GraphAttackError
from .losses import attacked_nodes


@dataclass
class GraphAttackResult:
    """Outcome of a graph attack.

    Attributes:
        data: the perturbed graph (a copy); flips: ``[2, F]`` flipped node pairs (i < j), or for
        feature attacks the flipped (node, feature) entries;
        budget: the allowed number of flips; queries: model evaluations the attack spent (forward
        passes over the whole graph; gradient attacks count one per forward-backward);
        seconds: wall time.
    """

    data: object
    flips: torch.Tensor
    budget: int
    queries: int
    seconds: float

    @property
    def num_flips(self) -> int:
        return int(self.flips.shape[1])

    def added_removed(self, original) -> tuple[int, int]:
        """(edges added, edges removed) relative to ``original``."""
        exists = pair_exists(
            self.flips, edge_keys(original.edge_index, original.num_nodes), original.num_nodes
        )
        return int((~exists).sum()), int(exists.sum())


def seeded_generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(
        seed if seed is not None else int(torch.randint(2**31, ()).item())
    )


# ----------------------------------------------------------------------------- protocol
class GraphAttack(ABC):
    """Base class: validation, eval mode, attacked nodes, timing; subclasses implement ``_flips``."""

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(self, budget: float | int = 0.05, seed: int | None = 0) -> None:
        resolve_budget(budget, 1_000_000)  # validate early
        self.budget = budget
        self.seed = seed

    def __call__(
        self, model: nn.Module, data, target: int | None = None, nodes: torch.Tensor | None = None
    ):
        return self.run(model, data, target, nodes)

    def run(
        self, model: nn.Module, data, target: int | None = None, nodes: torch.Tensor | None = None
    ) -> GraphAttackResult:
        check_graph(data)
        nodes = attacked_nodes(data, target, nodes)
        budget = self._budget(data, target)
        gen = seeded_generator(self.seed)
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            flips, queries = self._flips(model, data, nodes, budget, target, gen)
        finally:
            model.train(was_training)
        if flips.shape[1] > budget:
            raise AssertionError(
                f"{self.name} flipped {flips.shape[1]} pairs over a budget of {budget}"
            )
        return GraphAttackResult(
            self._apply(data, flips), flips, budget, queries, time.perf_counter() - t0
        )

    def _budget(self, data, target: int | None) -> int:
        """Number of flips: a fraction is of the undirected edges, or of the target's degree."""
        n = data.num_nodes
        if target is None:
            return resolve_budget(self.budget, data.edge_index.shape[1] // 2, n * (n - 1) // 2)
        deg = int((data.edge_index[0] == target).sum())
        return resolve_budget(self.budget, max(deg, 1), n - 1)

    def _apply(self, data, flips: torch.Tensor):
        """The perturbed copy of ``data``."""
        return flip_pairs(data, flips)

    @abstractmethod
    def _flips(self, model, data, nodes, budget, target, gen) -> tuple[torch.Tensor, int]:
        """Return (pairs to flip [2, F] with F <= budget, model evaluations spent)."""


def check_count(value, name: str) -> int:
    return validation.check_int(value, name, error=GraphAttackError)


def steps_for(budget: int, flips_per_step: int | None, rounds: int) -> int:
    """Flips per greedy round: given, or the budget over ``rounds`` rounds."""
    return flips_per_step or max(1, math.ceil(budget / rounds))
