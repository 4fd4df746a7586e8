"""Baselines: random flips, and DICE (Waniek et al. 2018: delete edges inside classes, connect across
classes)."""

from __future__ import annotations

import torch

from .base import GraphAttack
from .edges import candidate_pairs, edge_keys
from .errors import GraphAttackError


class RandomFlips(GraphAttack):
    """Flip ``budget`` uniformly random node pairs (or pairs touching the target)."""

    name = "random"
    uses_gradients = False

    def _flips(self, model, data, nodes, budget, target, gen):
        pairs = candidate_pairs(data, max(4 * budget, 1000), gen, target)
        return pairs[:, torch.randperm(pairs.shape[1], generator=gen)[:budget]], 0


class DICE(GraphAttack):
    """DICE: each flip removes a random edge between two nodes of the same class or adds one between
    two nodes of different classes (half and half), using the labels of the whole graph."""

    name = "dice"
    uses_gradients = False

    def _flips(self, model, data, nodes, budget, target, gen):
        n, y = data.num_nodes, data.y
        keys = edge_keys(data.edge_index, n)
        i, j = keys // n, keys % n
        same = (y[i] == y[j]) & (y[i] >= 0)
        if target is not None:
            same &= (i == target) | (j == target)
        internal = keys[same]
        n_remove = min(budget // 2, internal.numel())
        removed = internal[torch.randperm(internal.numel(), generator=gen)[:n_remove]]
        n_add = budget - n_remove
        pairs = candidate_pairs(data, max(8 * n_add, 2000), gen, target)
        a, b = pairs
        ok = (y[a] != y[b]) & (y[a] >= 0) & (y[b] >= 0) & ~torch.isin(a * n + b, keys)
        external = (a * n + b)[ok]
        if external.numel() < n_add:
            raise GraphAttackError("not enough cross-class pairs to add; lower the budget")
        added = external[torch.randperm(external.numel(), generator=gen)[:n_add]]
        chosen = torch.cat([removed, added])
        return torch.stack([chosen // n, chosen % n]), 0
