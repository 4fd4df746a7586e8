"""Greedy topology attack (GTA; Xu et al., arXiv 2002.10947): repeatedly flip the candidate pairs with
the largest first-order gain ``dL/ds`` of the relaxed flip variables at the current graph, re-scoring
after every round."""

from __future__ import annotations

import torch

from .base import GraphAttack, check_count, steps_for
from .edges import candidate_pairs
from .losses import check_loss, node_loss
from .relaxation import Relaxation


class GreedyTopology(GraphAttack):
    """GTA.

    Args:
        budget: fraction of edges in (0, 1] or number of flips.
        loss: ``"masked-ce"`` (default: cross-entropy of the nodes still classified correctly), ``"ce"``
            or ``"cw"``.
        rounds: scoring rounds (``flips_per_step`` = budget / rounds unless given).
        max_candidates: all pairs up to this many, else a fresh random block per round.
    Stops early when no candidate has a positive score.
    """

    name = "gta"

    def __init__(
        self,
        budget: float | int = 0.05,
        loss: str = "masked-ce",
        rounds: int = 50,
        flips_per_step: int | None = None,
        max_candidates: int = 6_000_000,
        seed: int | None = 0,
    ) -> None:
        super().__init__(budget, seed)
        self.loss = check_loss(loss)
        self.rounds = check_count(rounds, "rounds")
        self.flips_per_step = (
            None if flips_per_step is None else check_count(flips_per_step, "flips_per_step")
        )
        self.max_candidates = check_count(max_candidates, "max_candidates")

    def scores(self, model, relax, nodes, y, gen) -> tuple[torch.Tensor, int]:
        """``([C] scores, queries)``: the gradient of the loss with respect to each pair's flip."""
        s = torch.zeros(relax.pairs.shape[1], dtype=relax.x.dtype)
        _, g = relax.gradient(model, s, lambda logits: node_loss(logits[nodes], y, self.loss))
        return g, 1

    def round_candidates(self, model, data, nodes, y, gen, chosen, target, first):
        """``(pairs [2, C] or None, queries)``: the candidates of a round; None keeps the last set.
        Every pair (small graphs, targeted attacks) is scored each round; otherwise a fresh block
        of pairs not flipped yet."""
        n = data.num_nodes
        fixed = target is not None or n * (n - 1) // 2 <= self.max_candidates
        if fixed and not first:
            return None, 0
        return candidate_pairs(data, self.max_candidates, gen, target, exclude=chosen), 0

    def _flips(self, model, data, nodes, budget, target, gen):
        n = data.num_nodes
        per = steps_for(budget, self.flips_per_step, self.rounds)
        y = data.y[nodes]
        chosen = torch.empty(0, dtype=torch.long)  # keys of flipped pairs
        queries, relax, current = 0, None, data
        while chosen.numel() < budget:
            pairs, q = self.round_candidates(
                model, current, nodes, y, gen, chosen, target, relax is None
            )
            queries += q
            if pairs is not None:
                if pairs.shape[1] == 0:
                    break
                relax = Relaxation(current, pairs)
                taken = torch.zeros(pairs.shape[1], dtype=torch.bool)
            score, q = self.scores(model, relax, nodes, y, gen)
            queries += q
            score = score.masked_fill(taken, float("-inf"))
            k = min(per, budget - chosen.numel(), int((score > 0).sum()))
            if k == 0:
                break
            top = score.topk(k).indices
            new = relax.pairs[:, top]
            chosen = torch.cat([chosen, new[0] * n + new[1]])
            taken[top] = True
            relax.flip(top)
            current = relax.data
        return torch.stack([chosen // n, chosen % n]), queries
