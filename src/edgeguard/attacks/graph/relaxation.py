"""Flips relaxed to continuous edge weights for gradient-based attacks: with ``s`` in [0, 1] per
candidate pair, an existing edge gets weight ``1 - s`` and a missing one ``s`` (the candidate pairs are
appended to the edge list with weight ``-s`` or ``+s``; message passing and degrees add duplicates up)."""

from __future__ import annotations

import torch
from torch import nn

from .edges import edge_keys, flip_pairs, pair_exists


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
            return float(loss.detach()), self.sign * g
        s = s.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(self.x, *self.graph(s, all_pairs=True)))
            (g,) = torch.autograd.grad(loss, s)
        return float(loss.detach()), g
