"""Common loop of the zeroth-order attacks: a black-box loss, an L-inf ball, early stop per sample."""

from __future__ import annotations

import torch

from ..base import Attack, check_positive, check_steps
from ..cw import margin
from .blackbox import BlackBox


class ZOAttack(Attack):
    """Minimise the log-probability margin (ZOO's loss) of a black-box model inside the L-inf ball of
    radius ``eps`` with at most ``max_queries`` queries per sample; each sample stops once fooled
    (its query count is what it spent up to then)."""

    norms = ("linf",)

    def __init__(
        self,
        eps: float = 0.1,
        max_queries: int = 2000,
        lr: float = 0.01,
        mu: float = 0.005,
        kappa: float = 0.0,
        seed: int | None = 0,
    ) -> None:
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.max_queries = check_steps(max_queries, "max_queries")
        self.lr = check_positive(lr, "lr")
        self.mu = check_positive(mu, "mu")
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)
        self.seed = seed
        self.norm = "linf"

    def _loss_fn(self, model, y, target, active):
        bb = model if isinstance(model, BlackBox) else BlackBox(model)

        def f(z: torch.Tensor) -> torch.Tensor:
            out = bb(z)
            logp = out.clamp_min(1e-30).log() if bb.output == "probs" else out.log_softmax(-1)
            reps = len(z) // int(active.sum())
            yy = y[active].repeat(reps)
            tt = target[active].repeat(reps) if target is not None else None
            return margin(logp, yy, tt, self.kappa)

        return f

    def _step(self, state: dict, f, x_adv: torch.Tensor, gen, active: torch.Tensor, fx):
        """One update of the active samples ``x_adv`` (``active``: [N] mask over the whole batch,
        for per-sample optimiser state; ``fx``: the loss already queried at ``x_adv``); returns
        (new x_adv, queries per sample spent)."""
        raise NotImplementedError

    def _perturb(self, model, x, y, target):
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        n = len(x)
        x_adv = x.clone()
        queries = torch.zeros(n, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        state: dict = {}
        while True:
            active = ~done & (queries < self.max_queries)
            if not active.any():
                break
            with torch.no_grad():
                fa = self._loss_fn(model, y, target, active)(x_adv[active])
                queries[active] += 1
                now_done = fa <= 0
                idx = torch.nonzero(active).flatten()
                done[idx[now_done]] = True
                active[idx[now_done]] = False
                if not active.any():
                    break
                f = self._loss_fn(model, y, target, active)
                # the loss at the current point was just queried: the estimator reuses it
                new, spent = self._step(state, f, x_adv[active], gen, active, fa[~now_done])
                x_adv[active] = (x[active] + (new - x[active]).clamp(-self.eps, self.eps)).clamp(
                    0, 1
                )
                queries[active] += spent
        return x_adv, queries
