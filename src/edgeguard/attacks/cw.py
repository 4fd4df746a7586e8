"""C&W-L2 (Carlini & Wagner, 2017): minimise ||delta||_2^2 + c * f(x + delta) in tanh space with Adam,
f the logit margin (clamped at -kappa), with a per-sample binary search over c; the smallest
successful perturbation seen is returned (the input itself where none succeeded)."""

from __future__ import annotations

import torch

from .base import Attack, check_positive, check_steps


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float):
    """f >= -kappa; f <= 0 means success.  Untargeted: Z_y - max_{i != y} Z_i; targeted:
    max_{i != t} Z_i - Z_t."""
    cls = target if target is not None else y
    one_hot = torch.nn.functional.one_hot(cls, logits.shape[1]).bool()
    own = logits[one_hot]
    other = logits.masked_fill(one_hot, -float("inf")).amax(1)
    f = own - other if target is None else other - own
    return f.clamp_min(-kappa)


class CW(Attack):
    name = "cw"
    norms = ("l2",)

    def __init__(
        self,
        c: float = 1.0,
        kappa: float = 0.0,
        steps: int = 100,
        lr: float = 0.01,
        binary_steps: int = 5,
        abort_early: bool = True,
    ) -> None:
        self.c = check_positive(c, "c")
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)
        self.steps = check_steps(steps)
        self.lr = check_positive(lr, "lr")
        self.binary_steps = check_steps(binary_steps, "binary_steps")
        self.abort_early = abort_early
        self.norm = "l2"

    def _perturb(self, model, x, y, target):
        n = len(x)
        lo = torch.zeros(n)
        hi = torch.full((n,), float("inf"))
        c = torch.full((n,), self.c)
        best = x.clone()
        best_l2 = torch.full((n,), float("inf"))
        queries = torch.zeros(n, dtype=torch.long)
        w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        for _ in range(self.binary_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool)
            prev = float("inf")
            for step in range(self.steps):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                f = margin(logits, y, target, self.kappa)
                l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = (l2 + c * f).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                queries += 1
                with torch.no_grad():
                    ok = f <= 0
                    d = l2.sqrt()
                    better = ok & (d < best_l2)
                    best[better] = x_adv[better].detach()
                    best_l2 = torch.where(better, d, best_l2)
                    succeeded |= ok
                if self.abort_early and step % max(1, self.steps // 10) == 0:
                    if loss.item() > prev * 0.9999:
                        break
                    prev = loss.item()
            # binary search: shrink c where it succeeded, grow it where it did not
            hi = torch.where(succeeded, torch.minimum(hi, c), hi)
            lo = torch.where(succeeded, lo, torch.maximum(lo, c))
            c = torch.where(hi < float("inf"), (lo + hi) / 2, c * 10)
        return best, queries
