"""PGD attack on binary node features (bag-of-words graphs such as Cora and CiteSeer): the feature
flips of the attacked region are relaxed to ``s`` in [0, 1] (``x' = x + (1 - 2x) * s``), found by
projected gradient ascent under a flip budget, then sampled as a binary perturbation, as the topology
PGD attack of Xu et al. (IJCAI 2019) does for edges.  Evasion; global or targeted (the target's own
features)."""

from __future__ import annotations

import torch

from .edges import resolve_budget
from .errors import GraphAttackError
from .losses import attack_value, node_loss
from .pgd import RelaxedPGD, sample_binary


def check_binary(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise GraphAttackError(f"node features must be floating point, got {x.dtype}")
    if not ((x == 0) | (x == 1)).all():
        raise GraphAttackError(
            "feature flips need binary 0/1 node features (bag-of-words, as in Cora/CiteSeer); "
            "these features are not binary (normalised features? load the graph without "
            "NormalizeFeatures)"
        )


class PGDFeatures(RelaxedPGD):
    """PGD feature-flip attack.

    Args:
        budget: a fraction in (0, 1] of the nonzero feature entries (of the whole graph, or of the
            target's row when targeted) or a number of flips.
        loss: ``"ce"``, ``"cw"``, ``"masked-ce"`` or ``"prob-margin"`` over the attacked nodes.
        steps, lr, samples: as :class:`PGDTopology`.
        max_candidates: flip variables at most (default 20M); on larger graphs the rows are the
            attacked nodes first, then random other nodes, up to this many entries.
    ``result.flips`` holds the flipped ``(node, feature)`` entries; the topology is unchanged.
    """

    name = "pgd-features"
    default_max_candidates = 20_000_000

    def _budget(self, data, target):
        check_binary(data.x)
        if target is None:
            return resolve_budget(self.budget, max(int((data.x != 0).sum()), 1), data.x.numel())
        return resolve_budget(
            self.budget, max(int((data.x[target] != 0).sum()), 1), data.x.shape[1]
        )

    def _rows(self, data, nodes, target, gen) -> torch.Tensor:
        n, d = data.x.shape
        if target is not None:
            return torch.tensor([target])
        if n * d <= self.max_candidates:
            return torch.arange(n)
        room = max(self.max_candidates // d, 1)
        others = torch.ones(n, dtype=torch.bool)
        others[nodes] = False
        rest = others.nonzero().squeeze(1)
        rest = rest[torch.randperm(rest.numel(), generator=gen)]
        return torch.cat([nodes, rest])[:room]

    def _flips(self, model, data, nodes, budget, target, gen):
        rows = self._rows(data, nodes, target, gen)
        x0 = data.x
        sign = 1 - 2 * x0[rows]  # +1 turns a feature on, -1 off
        y = data.y[nodes]
        s = torch.zeros_like(sign)

        def perturbed(s):
            return x0.index_add(0, rows, sign * s)

        def logits(s):
            return model(perturbed(s), data.edge_index, None)[nodes]

        def value(s):
            return node_loss(logits(s), y, self.loss)

        for t in range(1, self.steps + 1):
            sv = s.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(value(sv), sv)
            s = self.ascend(s, g, t, budget)
        with torch.no_grad():
            draw, _ = sample_binary(
                s, budget, self.samples, gen, lambda d: attack_value(logits(d), y, self.loss)
            )
        r, f = draw.nonzero().T
        return torch.stack([rows[r], f]), self.steps + self.samples + 1

    def _apply(self, data, flips):
        out = data.clone()
        out.x = data.x.clone()
        out.x[flips[0], flips[1]] = 1 - out.x[flips[0], flips[1]]
        return out
