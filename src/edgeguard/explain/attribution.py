"""Integrated gradients along the straight path between two inputs (Sundararajan et al. 2017), with
the quadrature rules Captum offers, for pixels and for the units of a hidden layer (conductance)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .hooks import ExplainError, capture

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alphas`` in [0, 1] and weights (summing to 1) of an ``steps``-point rule for
    integrals over [0, 1]; the same rules and point placement as Captum's ``approximation_methods``."""
    if not isinstance(steps, int) or steps < 1 or (method == "riemann_trapezoid" and steps < 2):
        raise ExplainError(f"steps must be an integer >= 1 (>= 2 for the trapezoid), got {steps!r}")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * w)
    if method == "riemann_trapezoid":
        a = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
        return a, w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in offsets:
        raise ExplainError(
            f"unknown integration method {method!r}; choose from {', '.join(METHODS)}"
        )
    a = (torch.arange(steps, dtype=torch.float64) + offsets[method]) / steps
    return a, torch.full((steps,), 1 / steps, dtype=torch.float64)


def _class_sum(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, classes.view(-1, 1)).sum()


def integrated_gradients(
    model: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor,
    steps: int = 50,
    method: str = "gausslegendre",
    batch_size: int = 512,
) -> torch.Tensor:
    """Integrated gradients of logit ``target`` from ``baselines`` to ``inputs``.

    Args:
        inputs, baselines: ``[N, ...]`` of the same shape (e.g. ``x_adv`` and ``x``).
        target: ``[N]`` class index per sample.
        steps, method: the quadrature (see :func:`quadrature`).
        batch_size: interpolated inputs per forward-backward pass (memory bound).
    Returns ``[N, ...]`` attributions whose sum per sample approximates
    ``logit(inputs) - logit(baselines)`` (exact as ``steps`` grows: completeness).
    """
    if inputs.shape != baselines.shape:
        raise ExplainError(
            f"inputs {tuple(inputs.shape)} and baselines {tuple(baselines.shape)} differ in shape"
        )
    alphas, weights = quadrature(steps, method)
    alphas, weights = alphas.to(inputs), weights.to(inputs)
    n = inputs.shape[0]
    diff = inputs - baselines
    total = torch.zeros_like(inputs)
    per = max(1, batch_size // steps)  # samples per pass, all steps of a sample together
    for s in range(0, n, per):
        d, b, t = diff[s : s + per], baselines[s : s + per], target[s : s + per]
        shape = (steps, *[1] * d.dim())
        path = (b.unsqueeze(0) + alphas.view(shape) * d.unsqueeze(0)).flatten(0, 1)
        with torch.enable_grad():
            path.requires_grad_(True)
            logits = model(path)
            (g,) = torch.autograd.grad(_class_sum(logits, t.repeat(steps)), path)
        g = g.view(steps, *d.shape)
        total[s : s + per] = (weights.view(shape) * g).sum(0)
    return (diff * total).detach()


def unit_conductance(
    model: nn.Module,
    layer: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: list[torch.Tensor],
    steps: int = 32,
    batch_size: int = 1024,
) -> list[torch.Tensor]:
    """Contribution of each unit (channel) of ``layer`` to the change of each logit in ``targets``
    along the straight input path from ``baselines`` to ``inputs`` (Dhamdhere et al.'s conductance).

    The path integral of ``dlogit/dA . dA/dalpha`` is taken with the midpoint rule over ``steps``
    intervals: ``sum_i grad_A logit(x(m_i)) . (A(x(a_{i+1})) - A(x(a_i)))``, so the contributions of
    all units add up to the logit change up to an O(1/steps^2) error (completeness).

    Args:
        inputs, baselines: ``[N, ...]``; targets: a list of ``[N]`` class tensors.
    Returns one ``[N, K]`` tensor per target (K = channels of the layer's output, dim 1).
    """
    n = inputs.shape[0]
    pts = 2 * steps + 1  # interval ends and midpoints
    alphas = torch.linspace(0, 1, pts, dtype=inputs.dtype, device=inputs.device)
    per = max(1, batch_size // pts)
    out: list[list[torch.Tensor]] = [[] for _ in targets]
    for s in range(0, n, per):
        x, b = inputs[s : s + per], baselines[s : s + per]
        m = x.shape[0]
        shape = (pts, *[1] * x.dim())
        path = (b.unsqueeze(0) + alphas.view(shape) * (x - b).unsqueeze(0)).flatten(0, 1)
        with torch.enable_grad(), capture(layer) as acts:
            logits = model(path)
        if len(acts) != 1:
            raise ExplainError(f"the layer ran {len(acts)} times in one forward pass; pick another")
        act = acts[0]
        a = act.detach().view(pts, m, *act.shape[1:])
        d_act = a[2::2] - a[:-2:2]  # [steps, m, K, ...]: activation change over each interval
        for j, t in enumerate(targets):
            (g,) = torch.autograd.grad(
                _class_sum(logits, t[s : s + per].repeat(pts)),
                act,
                retain_graph=j + 1 < len(targets),
            )
            g = g.view(pts, m, *act.shape[1:])[1::2]  # gradients at the midpoints
            contrib = (g * d_act).sum(0)
            out[j].append(contrib.flatten(2).sum(2) if contrib.dim() > 2 else contrib)
    return [torch.cat(o) for o in out]
