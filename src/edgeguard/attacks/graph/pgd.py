"""PGD topology attack (Xu et al., "Topology Attack and Defense for Graph Neural Networks", IJCAI
2019): projected gradient ascent on the relaxed flip variables ``s`` in ``{0 <= s <= 1, sum s <= B}``,
then random Bernoulli sampling of the binary perturbation.

Two choices decide its strength on real graphs (as in PRBCD, Geisler et al. 2021): the step is the
raw gradient scaled by ``budget / num_nodes`` (a max-normalised step moves one pair at a time and
leaves the relaxed mass smeared over thousands of pairs), and the discrete perturbation is chosen by
the number of attacked nodes it misclassifies (the top-``B`` pairs of every iterate and the final
random draws), not by the relaxed loss alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

from .base import GraphAttack, check_count
from .edges import candidate_pairs
from .errors import GraphAttackError
from .losses import attack_value, check_loss, node_loss
from .relaxation import Relaxation

Value = TypeVar("Value", float, tuple)


def project_budget(s: torch.Tensor, budget: float, iters: int = 40) -> torch.Tensor:
    """Euclidean projection onto ``{0 <= s <= 1, sum(s) <= budget}``: clip, or, when the clipped
    vector is over budget, ``clip(s - mu, 0, 1)`` with ``mu`` found by bisection."""
    clipped = s.clamp(0, 1)
    if clipped.sum() <= budget:
        return clipped
    lo, hi = float(s.min()) - 1, float(s.max())
    # entries <= lo add 0 and entries >= hi + 1 add 1 at every later mu: only the rest is summed
    active, ones = s.flatten(), 0
    for k in range(iters):
        mu = (lo + hi) / 2
        if (active - mu).clamp(0, 1).sum() + ones > budget:
            lo = mu
        else:
            hi = mu
        if k % 4 == 3:
            ones += int((active >= hi + 1).sum())
            active = active[(active > lo) & (active < hi + 1)]
    return (s - hi).clamp(0, 1)


class RelaxedPGD(GraphAttack):
    """Settings and ascent step shared by the PGD attacks on relaxed flips (topology, features)."""

    default_max_candidates = 6_000_000

    def __init__(
        self,
        budget: float | int = 0.05,
        loss: str = "ce",
        steps: int = 100,
        lr: float = 1.0,
        samples: int = 20,
        max_candidates: int | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(budget, seed)
        self.loss = check_loss(loss)
        self.steps = check_count(steps, "steps")
        self.samples = check_count(samples, "samples")
        self.max_candidates = check_count(
            max_candidates or self.default_max_candidates, "max_candidates"
        )
        if lr <= 0:
            raise GraphAttackError(f"lr must be > 0, got {lr}")
        self.lr = lr

    def ascend(self, s: torch.Tensor, g: torch.Tensor, t: int, budget: int) -> torch.Tensor:
        """Step ``t`` (from 1): ``lr / sqrt(t)`` along the max-normalised gradient, then projection
        onto ``{0 <= s <= 1, sum s <= budget}``."""
        step = self.lr / math.sqrt(t) * g / g.abs().max().clamp_min(1e-30)
        return project_budget((s + step).flatten(), budget).view_as(s)


class PGDTopology(RelaxedPGD):
    """PGD topology attack.

    Args:
        budget: fraction of edges in (0, 1] or number of flips.
        loss: ``"ce"`` or ``"cw"`` over the attacked nodes.
        steps: gradient steps; lr: step size ``lr / sqrt(t)`` on the max-normalised gradient.
        samples: Bernoulli draws of the binary perturbation (the best one is kept).
        max_candidates: all pairs up to this many (default 6M), else a random block of pairs
            (large graphs).
        restarts: PGD runs, the first from ``s = 0``, the others from random ``s`` on the budget
            (uniform, projected); the sampled perturbation with the largest loss over all runs
            is returned, so more restarts never give a weaker attack than one.
    """

    name = "pgd"

    def __init__(self, *args, restarts: int = 1, **settings) -> None:
        settings.setdefault("lr", 1000.0)
        super().__init__(*args, **settings)  # budget, loss, steps, lr, samples, ... as RelaxedPGD
        self.restarts = check_count(restarts, "restarts")

    def _flips(self, model, data, nodes, budget, target, gen):
        pairs = candidate_pairs(data, self.max_candidates, gen, target)
        relax = Relaxation(data, pairs)
        y = data.y[nodes]
        scale = self.lr * budget / data.num_nodes  # PRBCD's step: the raw gradient times B / N

        def loss_fn(logits):
            return node_loss(logits[nodes], y, self.loss)

        def value(d: torch.Tensor) -> tuple[int, float]:
            return attack_value(relax.logits(model, d)[nodes], y, self.loss)

        best, best_value = None, (-1, -math.inf)
        for r in range(self.restarts):
            s = torch.zeros(pairs.shape[1], dtype=data.x.dtype)
            if r:  # a random start on the budget
                s = project_budget(torch.rand(s.shape, generator=gen, dtype=s.dtype), budget)
            kept, kept_value = s, (-1, -math.inf)  # the iterate whose top-B pairs do best
            for t in range(1, self.steps + 1):
                _, g = relax.gradient(model, s, loss_fn)
                s = project_budget(s + scale / math.sqrt(t) * g, budget)
                v = value(top_budget(s, budget).to(s.dtype))
                if v > kept_value:
                    kept, kept_value = s, v
            pert, v = sample_binary(kept, budget, self.samples, gen, value)
            if v > best_value:
                best, best_value = pert, v
        return pairs[:, best], self.restarts * (2 * self.steps + self.samples + 1)


def top_budget(s: torch.Tensor, budget: int) -> torch.Tensor:
    """Bool mask of the ``budget`` largest positive entries of ``s`` (at least one)."""
    draw = torch.zeros_like(s, dtype=torch.bool)
    draw.view(-1)[s.flatten().topk(min(budget, int((s > 0).sum()) or 1)).indices] = True
    return draw


@torch.no_grad()
def sample_binary(
    s: torch.Tensor,
    budget: int,
    samples: int,
    gen: torch.Generator,
    value: Callable[[torch.Tensor], Value],
) -> tuple[torch.Tensor, Value]:
    """Random sampling of a binary perturbation from relaxed ``s`` in [0, 1] (IJCAI 2019): the
    top-``budget`` entries and ``samples`` Bernoulli(s) draws (cut to the ``budget`` most likely when
    over), keeping the draw with the largest ``value(draw as float)`` (a number or a tuple compared
    in order).  Returns the bool mask and its value."""
    best, best_value = None, None
    for k in range(samples + 1):
        draw = top_budget(s, budget) if k == 0 else torch.rand(s.shape, generator=gen) < s
        if int(draw.sum()) > budget:
            idx = draw.flatten().nonzero().squeeze(1)
            draw = torch.zeros_like(draw)
            draw.view(-1)[idx[s.flatten()[idx].topk(budget).indices]] = True
        v = value(draw.to(s.dtype))
        if best_value is None or v > best_value:
            best, best_value = draw, v
    return best, best_value
