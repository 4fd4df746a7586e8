"""Per-layer rates from output-level sensitivity (the sensitivity analysis of Distiller and NNI).

Each layer is pruned alone at a few rates and the whole model's output loss is measured; the
rates for a MAC target are then chosen greedily, a small step at a time, on the layer whose next
step costs the least loss per removed MAC (the loss curves interpolated linearly between the
measured rates, and assumed to add up over layers).  A layer's local reconstruction error does
not say what it costs at the output (docs/benchmarks-archive.md); the output loss does.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..sparsity import SparsityError, get_scheme, prune_model
from .reconstruct import reconstruct

log = logging.getLogger(__name__)


def layer_sensitivity(
    model: nn.Module,
    scheme: str,
    layers: Sequence[str],
    loss: Callable[[nn.Module], float],
    rates: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    calibration: Sequence[tuple] = (),
    damp: float = 0.01,
) -> dict[str, dict[float, float]]:
    """``{layer: {rate: loss(model with that layer alone pruned at rate)}}``.

    Each layer is pruned by ``scheme`` magnitude (its smallest units; rate = fraction of units
    removed, in (0, 1)), on a copy of ``model`` (left untouched).  With ``calibration`` inputs
    (argument tuples) the pruned layer's kept units are re-chosen by OBS saliency and its kept
    weights re-solved on them (:func:`~.reconstruct.reconstruct`), as the hard pruning that
    follows will do.  ``loss(net) -> float`` (lower is better, e.g. a distillation loss against
    the dense model on a fixed batch) is called under ``torch.no_grad``."""
    if not layers:
        raise SparsityError("layer_sensitivity needs at least one layer")
    if not rates or any(not (0.0 < r < 1.0) for r in rates):
        raise SparsityError(f"sensitivity rates must lie in (0, 1), got {list(rates)}")
    sch = get_scheme(scheme)
    table: dict[str, dict[float, float]] = {}
    for i, name in enumerate(layers):
        row = {}
        for rate in sorted(rates):
            net = copy.deepcopy(model).eval()
            res = prune_model(net, sch, rates={name: rate}, layers=[name], attach=not calibration)
            if calibration:
                reconstruct(net, res.masks, calibration, damp=damp, select=sch)
            with torch.no_grad():
                value = float(loss(net))
            if not math.isfinite(value):
                raise SparsityError(f"the loss of {name} at rate {rate} is {value}")
            row[float(rate)] = value
        table[name] = row
        log.info("sensitivity %d/%d %s: %s", i + 1, len(layers), name, row)
    return table


def _curve(row: Mapping[float, float], rate: float) -> float:
    """The loss at ``rate``: linear between the measured rates (0 at rate 0), the last slope past
    the highest."""
    xs = [0.0, *sorted(row)]
    ys = [0.0, *(row[x] for x in xs[1:])]
    for j in range(1, len(xs)):
        if rate <= xs[j]:
            return ys[j - 1] + (rate - xs[j - 1]) / (xs[j] - xs[j - 1]) * (ys[j] - ys[j - 1])
    return ys[-1] + (rate - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])


def allocate_rates(
    sensitivity: Mapping[str, Mapping[float, float]],
    macs: Mapping[str, float],
    remove: float,
    max_rate: float = 0.7,
    step: float = 0.025,
) -> dict[str, float]:
    """Per-layer rates that remove ``remove`` MACs (a layer at rate r removes ``r * macs[layer]``)
    with the least summed loss, greedily: each ``step`` goes to the layer whose loss rises least
    per MAC it removes, no layer past ``max_rate`` (a cap: the one-layer curves do not see how
    pruned neighbours compound).  Raises when the cap cannot remove that much."""
    if not 0 < step <= max_rate < 1:
        raise SparsityError(f"need 0 < step <= max_rate < 1, got step {step}, max_rate {max_rate}")
    missing = [n for n in sensitivity if n not in macs]
    if missing:
        raise SparsityError(f"no MAC count for layers {missing}")
    top = math.floor(max_rate / step + 1e-9) * step  # the highest rate the steps reach
    reachable = top * sum(macs[n] for n in sensitivity)
    if remove > reachable + 1e-9:
        raise SparsityError(
            f"removing {remove:.4g} MACs needs more than max_rate {max_rate} on every layer "
            f"(at most {reachable:.4g}): raise max_rate or lower the target"
        )
    rates = {n: 0.0 for n in sensitivity}
    removed = 0.0
    while removed < remove - 1e-9:
        open_ = [n for n in rates if rates[n] + step <= top + 1e-9 and macs[n] > 0]

        def cost(n: str) -> float:
            r = rates[n]
            return (_curve(sensitivity[n], r + step) - _curve(sensitivity[n], r)) / macs[n]

        best = min(open_, key=cost)
        rates[best] += step
        removed += step * macs[best]
    return {n: round(r, 6) for n, r in rates.items()}
