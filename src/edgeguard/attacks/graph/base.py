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

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ... import validation
from ...errors import EdgeguardError

log = logging.getLogger(__name__)


class GraphAttackError(EdgeguardError, ValueError):
    """Invalid graph, budget, nodes or settings."""


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


# ----------------------------------------------------------------------------- graph checks
def edge_keys(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted int64 keys ``i * n + j`` of the undirected pairs (i < j) of ``edge_index``."""
    i, j = edge_index
    keep = i < j
    return torch.sort(i[keep] * n + j[keep]).values


def pair_exists(pairs: torch.Tensor, keys: torch.Tensor, n: int) -> torch.Tensor:
    """``[P]`` bool: is each pair (i < j) of ``pairs [2, P]`` an edge (``keys`` from :func:`edge_keys`)."""
    q = pairs[0] * n + pairs[1]
    if keys.numel() == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(keys, q).clamp_max(keys.numel() - 1)
    return keys[pos] == q


def check_graph(data) -> None:
    """Raise :class:`GraphAttackError` for self-loops, duplicate edges, or a directed edge list;
    isolated nodes are allowed (they can gain edges; GCN's self-loops keep them defined)."""
    for attr in ("x", "edge_index", "y"):
        if getattr(data, attr, None) is None:
            raise GraphAttackError(
                f"the graph has no {attr!r}; a PyG Data(x, edge_index, y) is needed"
            )
    ei, n = data.edge_index, data.num_nodes
    if ei.dim() != 2 or ei.shape[0] != 2 or ei.dtype != torch.long:
        raise GraphAttackError(f"edge_index must be an int64 tensor [2, E], got {tuple(ei.shape)}")
    if ei.numel() and (ei.min() < 0 or ei.max() >= n):
        raise GraphAttackError(f"edge_index refers to nodes outside [0, {n - 1}]")
    if (ei[0] == ei[1]).any():
        raise GraphAttackError(
            f"the graph has {int((ei[0] == ei[1]).sum())} self-loops; remove them first "
            "(torch_geometric.utils.remove_self_loops): flips are between distinct nodes"
        )
    keys = ei[0] * n + ei[1]
    if torch.unique(keys).numel() != keys.numel():
        raise GraphAttackError(
            "the graph has duplicate edges; merge them first (torch_geometric.utils.coalesce)"
        )
    fwd = edge_keys(ei, n)
    bwd = edge_keys(ei.flip(0), n)
    if fwd.numel() != bwd.numel() or not torch.equal(fwd, bwd):
        raise GraphAttackError(
            "the graph is directed (some edge lacks its reverse); topology attacks need an undirected "
            "graph (torch_geometric.utils.to_undirected)"
        )


def resolve_budget(budget: float | int, num_edges: int, candidates: int | None = None) -> int:
    """Number of flips: a float in (0, 1] is a fraction of ``num_edges`` (rounded, at least 1); an
    int >= 1 is a number of flips.  More flips than ``candidates`` is an error."""
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise GraphAttackError(
                f"budget must be a fraction in (0, 1] or an integer number of flips, got {budget}"
            )
        flips = max(1, round(budget * num_edges))
    elif isinstance(budget, int) and not isinstance(budget, bool):
        if budget < 1:
            raise GraphAttackError(
                f"a budget given as a number of flips must be >= 1, got {budget}"
            )
        flips = budget
    else:
        raise GraphAttackError(f"budget must be a float in (0, 1] or an int >= 1, got {budget!r}")
    if candidates is not None and flips > candidates:
        raise GraphAttackError(
            f"a budget of {flips} flips exceeds the {candidates} candidate pairs of this attack"
        )
    return flips


def flip_pairs(data, pairs: torch.Tensor):
    """A copy of ``data`` with the undirected pairs ``pairs [2, P]`` (i < j, distinct) flipped."""
    n = data.num_nodes
    keys = edge_keys(data.edge_index, n)
    flip = torch.unique(pairs[0] * n + pairs[1])
    exists = torch.isin(flip, keys)
    kept = keys[~torch.isin(keys, flip[exists])]
    new = torch.cat([kept, flip[~exists]])
    i, j = new // n, new % n
    out = data.clone()
    out.edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    return out


# ----------------------------------------------------------------------------- candidates
def candidate_pairs(
    data,
    max_pairs: int,
    generator: torch.Generator,
    target: int | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[2, C]`` candidate pairs (i < j): every pair touching ``target`` (targeted attacks); every
    pair when there are at most ``max_pairs``; else a random block of ``max_pairs`` distinct pairs
    (three quarters uniform pairs, one quarter existing edges, so removals stay possible).  Pairs in
    ``exclude`` (keys ``i * n + j``) are left out."""
    n = data.num_nodes
    if target is not None:
        others = torch.cat([torch.arange(target), torch.arange(target + 1, n)])
        t = torch.full_like(others, target)
        pairs = torch.stack([torch.minimum(t, others), torch.maximum(t, others)])
    elif n * (n - 1) // 2 <= max_pairs:
        pairs = torch.triu_indices(n, n, 1)
    else:
        m = max_pairs * 3 // 4
        i = torch.randint(n, (m,), generator=generator)
        j = torch.randint(n, (m,), generator=generator)
        keys = edge_keys(data.edge_index, n)
        k = min(keys.numel(), max_pairs - m)
        picked = keys[torch.randperm(keys.numel(), generator=generator)[:k]]
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        allk = torch.unique(torch.cat([(lo * n + hi)[lo != hi], picked]))
        pairs = torch.stack([allk // n, allk % n])
    if exclude is not None and exclude.numel():
        pairs = pairs[:, ~torch.isin(pairs[0] * n + pairs[1], exclude)]
    return pairs


class Relaxation:
    """The graph with candidate pairs whose flips are relaxed to weights ``s`` in [0, 1]: an existing
    edge gets weight ``1 - s``, a missing one ``s``."""

    def __init__(self, data, pairs: torch.Tensor) -> None:
        n = data.num_nodes
        self.pairs = pairs
        self.exists = pair_exists(pairs, edge_keys(data.edge_index, n), n)
        self.sign = torch.where(self.exists, -1.0, 1.0).to(data.x.dtype)
        self.data = data

    @property
    def x(self) -> torch.Tensor:
        return self.data.x

    def graph(self, s: torch.Tensor, all_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index, edge_weight)``: the real edges (weight 1) plus the candidate pairs, both
        directions, with weight ``sign * s`` (added to an existing edge, ``-s`` lowers it to
        ``1 - s``).  Pairs with ``s == 0`` change nothing and are left out unless ``all_pairs``."""
        base = self.data.edge_index
        ones = torch.ones(base.shape[1], dtype=self.x.dtype)
        if all_pairs:
            pairs, w = self.pairs, self.sign * s
        else:
            keep = s.detach() != 0
            pairs, w = self.pairs[:, keep], (self.sign * s)[keep]
        return torch.cat([base, pairs, pairs.flip(0)], 1), torch.cat([ones, w, w])

    def logits(self, model: nn.Module, s: torch.Tensor) -> torch.Tensor:
        return model(self.x, *self.graph(s))

    def flip(self, index: torch.Tensor) -> None:
        """Flip the candidate pairs at ``index`` in the base graph (they change sign)."""
        self.data = flip_pairs(self.data, self.pairs[:, index])
        self.sign[index] = -self.sign[index]
        self.exists[index] = ~self.exists[index]

    def gradient(self, model: nn.Module, s: torch.Tensor, loss_fn) -> tuple[float, torch.Tensor]:
        """``(loss, dloss/ds [C])`` at ``s``.  Models with ``pair_gradients`` (the GCN) give it from
        the real edges alone; others by autograd through every candidate pair."""
        if hasattr(model, "pair_gradients"):
            loss, g = model.pair_gradients(self.x, *self.graph(s), self.pairs, loss_fn)
            return float(loss), self.sign * g
        s = s.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(self.x, *self.graph(s, all_pairs=True)))
            (g,) = torch.autograd.grad(loss, s)
        return float(loss), g


# ----------------------------------------------------------------------------- losses
LOSSES = ("ce", "cw", "masked-ce")


def node_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, kappa: float = 0.0) -> torch.Tensor:
    """Loss to *maximise* over the attacked nodes (``logits [M, C]``, ``y [M]``): mean cross-entropy
    (``"ce"``), cross-entropy of the nodes still classified correctly, over all M (``"masked-ce"``,
    PyG's GRBCD default: flips are not spent on nodes already lost), or mean CW margin
    ``min(max_{c != y} z_c - z_y, kappa)`` (``"cw"``; a node misclassified by ``kappa`` stops pulling)."""
    if kind == "ce":
        return F.cross_entropy(logits, y)
    if kind == "masked-ce":
        right = (logits.argmax(1) == y).to(logits.dtype)
        return (F.cross_entropy(logits, y, reduction="none") * right).sum() / len(y)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - z_y).clamp(max=kappa).mean()


def attacked_nodes(data, target: int | None, nodes: torch.Tensor | None) -> torch.Tensor:
    """Indices of the attacked nodes: ``[target]``, ``nodes`` (indices or a mask), or the test mask;
    all must be labelled."""
    n = data.num_nodes
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n:
            raise GraphAttackError(f"target must be a node index in [0, {n - 1}], got {target!r}")
        nodes = torch.tensor([target])
    elif nodes is None:
        if getattr(data, "test_mask", None) is None:
            raise GraphAttackError("pass nodes= (the graph has no test_mask)")
        nodes = data.test_mask.nonzero().squeeze(1)
    elif nodes.dtype == torch.bool:
        nodes = nodes.nonzero().squeeze(1)
    if nodes.numel() == 0:
        raise GraphAttackError("no nodes to attack")
    if (data.y[nodes] < 0).any():
        raise GraphAttackError(
            f"{int((data.y[nodes] < 0).sum())} attacked nodes have no label (y < 0); "
            "attack labelled nodes only"
        )
    return nodes


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


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise GraphAttackError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss


def check_count(value, name: str) -> int:
    return validation.check_int(value, name, error=GraphAttackError)


def steps_for(budget: int, flips_per_step: int | None, rounds: int) -> int:
    """Flips per greedy round: given, or the budget over ``rounds`` rounds."""
    return flips_per_step or max(1, math.ceil(budget / rounds))
