"""ZO-signSGD (Liu et al., 2019): x <- Proj(x - lr * sign(g_hat)), g_hat a random-direction estimate
with q queries; the sign makes it robust to the estimate's scale and noise."""

from __future__ import annotations

from ..base import check_steps
from .base import ZOAttack
from .estimators import check_kind, random_estimate


class ZOSignSGD(ZOAttack):
    name = "zo-signsgd"

    def __init__(self, q: int = 10, kind: str = "gaussian", **kw) -> None:
        super().__init__(**kw)
        self.q, self.kind = check_steps(q, "q (random directions per estimate)"), check_kind(kind)

    def _step(self, state, f, x, gen, active, fx):
        g, spent = random_estimate(f, x, self.q, self.mu, self.kind, gen, fx=fx)
        return x - self.lr * g.sign(), spent
