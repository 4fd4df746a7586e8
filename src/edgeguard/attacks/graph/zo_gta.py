"""Zeroth-order greedy topology attack (ZO-GTA; Xu et al., arXiv 2002.10947): GTA whose scores are
random-direction zeroth-order estimates of ``dL/ds`` from the model's outputs only, queried through
the black-box wrapper (:class:`edgeguard.attacks.zo.BlackBox`), which counts every query."""

from __future__ import annotations

import torch
from torch import nn

from ..zo import BlackBox
from .errors import GraphAttackError
from .gta import GreedyTopology
from .relaxation import Relaxation


class RelaxedGraph(nn.Module):
    """``S [P, C] -> outputs [P, N, classes]``: the model on the graph with candidate-pair weights
    ``S[p]`` (one query per row)."""

    def __init__(self, model: nn.Module, relax: Relaxation) -> None:
        super().__init__()
        self.model, self.relax = model, relax
        self.train(model.training)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.relax.logits(self.model, row) for row in s])


def output_loss(probs: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """``[P]`` loss per query from probabilities ``[P, M, C]`` of the attacked nodes."""
    logp = probs.clamp_min(1e-12).log()
    ce = -logp.gather(2, y.expand(len(probs), -1).unsqueeze(2)).squeeze(2)
    if kind == "ce":
        return ce.mean(1)
    if kind == "masked-ce":
        return (ce * (probs.argmax(2) == y).to(ce.dtype)).mean(1)
    true = logp.gather(2, y.expand(len(probs), -1).unsqueeze(2)).squeeze(2)
    other = logp.masked_fill(nn.functional.one_hot(y, logp.shape[2]).bool(), float("-inf")).amax(2)
    return (other - true).clamp(max=0).mean(1)


class ZOGreedyTopology(GreedyTopology):
    """ZO-GTA: GTA with scores ``(1/q) sum_i (L(mu u_i) - L(0)) / mu * u_i`` over ``q`` Gaussian
    directions on a block of ``block`` candidate pairs per round.

    The block is chosen from outputs only (``candidates="margin"``, default): the attacked nodes still
    classified correctly with the smallest probability margin, each paired with random nodes that the
    model assigns to that node's runner-up class; or uniformly (``"random"``).

    Args:
        q: directions per round; mu: smoothing radius; block: candidate pairs scored per round;
        batch: perturbations per black-box call.
    ``queries`` in the result counts the black-box evaluations (``q + 2`` per round).
    """

    name = "zo-gta"
    uses_gradients = False

    def __init__(
        self,
        budget: float | int = 0.05,
        loss: str = "masked-ce",
        rounds: int = 50,
        flips_per_step: int | None = None,
        q: int = 40,
        mu: float = 0.05,
        block: int = 400,
        batch: int = 8,
        candidates: str = "margin",
        seed: int | None = 0,
    ) -> None:
        super().__init__(budget, loss, rounds, flips_per_step, max_candidates=block, seed=seed)
        if q < 1 or mu <= 0 or block < 1 or batch < 1:
            raise GraphAttackError("q, block and batch must be >= 1 and mu > 0")
        if candidates not in ("margin", "random"):
            raise GraphAttackError(f"candidates must be 'margin' or 'random', got {candidates!r}")
        self.q, self.mu, self.batch, self.candidates = q, mu, batch, candidates

    def _block(self, oracle_probs, data, nodes, y, gen, exclude):
        """Pairs (vulnerable attacked node, node predicted as its runner-up class)."""
        n = data.num_nodes
        p = oracle_probs[nodes]
        top2 = p.topk(2, dim=1)
        correct = top2.indices[:, 0] == y
        margin = torch.where(correct, top2.values[:, 0] - top2.values[:, 1], torch.inf)
        k_nodes = max(1, min(int(correct.sum()), self.max_candidates // 8))
        if not correct.any():
            return torch.empty(2, 0, dtype=torch.long)
        weak = margin.topk(k_nodes, largest=False).indices
        pred = oracle_probs.argmax(1)
        order = torch.argsort(pred)
        counts = torch.bincount(pred, minlength=p.shape[1])
        start = torch.cumsum(counts, 0) - counts
        v = nodes[weak].repeat_interleave(8)
        runner = top2.indices[weak, 1].repeat_interleave(8)
        pick = (torch.rand(v.numel(), generator=gen) * counts[runner]).long()
        u = order[(start[runner] + pick).clamp_max(n - 1)]
        ok = (u != v) & (counts[runner] > 0)
        lo, hi = torch.minimum(u, v)[ok], torch.maximum(u, v)[ok]
        keys = torch.unique(lo * n + hi)
        if exclude.numel():
            keys = keys[~torch.isin(keys, exclude)]
        return torch.stack([keys // n, keys % n])

    def round_candidates(self, model, data, nodes, y, gen, chosen, target, first):
        """A fresh output-chosen block each round (see the class docstring); one query."""
        if self.candidates == "random" or target is not None:
            return super().round_candidates(model, data, nodes, y, gen, chosen, target, first)
        probe = BlackBox(RelaxedGraph(model, Relaxation(data, torch.empty(2, 0, dtype=torch.long))))
        probs = probe(torch.zeros(1, 0))[0]
        return self._block(probs, data, nodes, y, gen, chosen), probe.queries

    def scores(self, model, relax, nodes, y, gen):
        pairs = relax.pairs
        if pairs.shape[1] > self.max_candidates:  # a targeted attack lists all pairs of the node
            keep = torch.randperm(pairs.shape[1], generator=gen)[: self.max_candidates]
            sub = Relaxation(relax.data, pairs[:, keep])
        else:
            keep, sub = None, relax
        oracle = BlackBox(RelaxedGraph(model, sub))
        c = sub.pairs.shape[1]
        u = torch.randn(self.q, c, generator=gen, dtype=relax.x.dtype)
        points = torch.cat([torch.zeros(1, c, dtype=relax.x.dtype), self.mu * u])
        losses = torch.cat(
            [
                output_loss(oracle(points[i : i + self.batch])[:, nodes], y, self.loss)
                for i in range(0, len(points), self.batch)
            ]
        )
        est = ((losses[1:] - losses[0]) / self.mu) @ u / self.q
        if keep is None:
            return est, oracle.queries
        full = torch.full((pairs.shape[1],), float("-inf"), dtype=est.dtype)
        full[keep] = est
        return full, oracle.queries
