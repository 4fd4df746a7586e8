"""Zeroth-order gradient estimators of a per-sample loss ``f: [N, ...] -> [N]`` from queries only.

* ``gaussian``: g = 1/(q mu) sum_i (f(x + mu u_i) - f(x)) u_i, u_i ~ N(0, I);
* ``sphere``: g = d/(q mu) sum_i (f(x + mu u_i) - f(x)) u_i, u_i uniform on the unit sphere;
* ``coordinate``: g_j = (f(x + mu e_j) - f(x - mu e_j)) / (2 mu) on chosen coordinates j.

The random estimators are biased towards the smoothed function and their cosine with the true
gradient grows like sqrt(q / d) for q << d; each costs q + 1 queries per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..base import AttackError

Loss = Callable[[torch.Tensor], torch.Tensor]


def check_kind(kind: str) -> str:
    if kind not in ("gaussian", "sphere"):
        raise AttackError(f"kind must be 'gaussian' or 'sphere', got {kind!r}")
    return kind


def random_estimate(
    f: Loss,
    x: torch.Tensor,
    q: int,
    mu: float,
    kind: str = "gaussian",
    gen: torch.Generator | None = None,
    fx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """(gradient estimate shaped like ``x``, queries per sample)."""
    if kind not in ("gaussian", "sphere"):
        raise AttackError(f"kind must be 'gaussian' or 'sphere', got {kind!r}")
    n = len(x)
    d = x[0].numel()
    spent = q + (1 if fx is None else 0)
    fx = f(x) if fx is None else fx
    u = torch.randn((q, *x.shape), generator=gen).to(x)
    if kind == "sphere":
        u = u / u.flatten(2).norm(dim=2).view(q, n, *[1] * (x.dim() - 1))
    fu = f((x.unsqueeze(0) + mu * u).flatten(0, 1)).view(q, n)
    diff = (fu - fx.unsqueeze(0)).view(q, n, *[1] * (x.dim() - 1))
    scale = (d if kind == "sphere" else 1.0) / (q * mu)
    return scale * (diff * u).sum(0), spent


def coordinate_estimate(
    f: Loss, x: torch.Tensor, coords: torch.Tensor, mu: float
) -> tuple[torch.Tensor, int]:
    """Symmetric differences on coordinates ``coords [N, B]`` (flat indices); other entries 0."""
    n, b = coords.shape
    flat = x.flatten(1)
    e = torch.zeros(n, b, flat.shape[1], dtype=x.dtype)
    e.scatter_(2, coords.unsqueeze(2), mu)
    plus = (flat.unsqueeze(1) + e).view(n * b, *x.shape[1:])
    minus = (flat.unsqueeze(1) - e).view(n * b, *x.shape[1:])
    diff = (f(plus) - f(minus)).view(n, b) / (2 * mu)
    g = torch.zeros_like(flat)
    g.scatter_(1, coords, diff)
    return g.view_as(x), 2 * b
