"""Which units to remove when the layers' input scales differ: the output error a unit's removal
causes, from the statistics of the layer's own inputs.

Weight magnitude ranks units as if every input channel had the same scale.  In a network whose
batch norms were folded into its convolutions (every deployed MobileNet) input channels differ in
RMS by 10-100x, and a small weight on a loud channel matters more than a large one on a quiet
channel.  With ``E[x_c^2]`` the mean square of input channel ``c`` (over samples and positions),
removing unit ``u`` changes its filters' outputs by about ``sum_{w in u} w^2 E[x_c(w)^2]`` in
square sum (exact when input channels are uncorrelated; the diagonal of the inputs' second moment,
as in Optimal Brain Damage or Wanda, Sun et al. 2023).  Divided by the layer's output mean square this is
a relative error, comparable across layers, so one ranking over all layers (error per removed MAC)
chooses the per-layer rates too.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..models.flops import FlopsReport
from ..sparsity import SparsityError, SparsityScheme


class InputStatistics:
    """Running ``E[x_c^2]`` per input channel and output mean square of ``layers`` (conv or linear
    modules), gathered by forward hooks on every call in training mode until :meth:`remove`;
    after :meth:`new_round` the next such call starts them afresh (until then the last round's
    values are read).
    Inputs ``[N, C, *spatial]`` (conv) or ``[N, C]`` (linear); the output's bias is left out of its
    mean square (a removed unit leaves the bias)."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.layers = dict(layers)
        self._hooks = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        self._fresh = False
        self.reset()

    def new_round(self) -> None:
        self._fresh = True

    def reset(self) -> None:
        self.sq: dict[str, torch.Tensor] = {}
        self.out_sq: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.out_count: dict[str, int] = {}

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not module.training or not torch.is_tensor(output):
                return
            if self._fresh:
                self._fresh = False
                self.reset()
            with torch.no_grad():
                x = inputs[0].detach().float()
                dims = [0, *range(2, x.dim())]
                s = x.square().sum(dims)
                self.sq[name] = self.sq[name] + s if name in self.sq else s
                self.count[name] = self.count.get(name, 0) + x.numel() // x.shape[1]
                y = output.detach().float()
                if getattr(module, "bias", None) is not None:
                    y = y - module.bias.detach().float().view(1, -1, *[1] * (y.dim() - 2))
                self.out_sq[name] = self.out_sq.get(name, 0.0) + float(y.square().sum())
                self.out_count[name] = self.out_count.get(name, 0) + y.numel()

        return hook

    def ready(self) -> bool:
        """Every layer has run at least once since the last reset."""
        return all(n in self.sq for n in self.layers)

    def input_mean_square(self, name: str) -> torch.Tensor:
        """``[C]``: mean square of each input channel of layer ``name``."""
        return self.sq[name] / max(self.count[name], 1)

    def output_mean_square(self, name: str) -> float:
        return self.out_sq[name] / max(self.out_count[name], 1)

    def state_dict(self) -> dict:
        """The last round's sums (tensors and numbers), for a resumed run to rank as this one."""
        return {
            "sq": dict(self.sq),
            "out_sq": dict(self.out_sq),
            "count": dict(self.count),
            "out_count": dict(self.out_count),
            "fresh": self._fresh,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sq, self.out_sq = dict(state["sq"]), dict(state["out_sq"])
        self.count, self.out_count = dict(state["count"]), dict(state["out_count"])
        self._fresh = bool(state["fresh"])

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def unit_output_errors(
    weight: torch.Tensor, scheme: SparsityScheme, input_ms: torch.Tensor, output_ms: float
) -> torch.Tensor:
    """``[num_units]``: the relative output error of removing each unit of ``weight`` (``[F, C,
    *kernel]``) alone: ``sum_{w in u} w^2 E[x_c^2] / (F E[y^2])``, the mean square change over all
    ``F`` outputs over their mean square (dimensionless, >= 0)."""
    w2 = weight.detach().float().square()
    scaled = w2 * input_ms.to(w2).view(1, -1, *[1] * (w2.dim() - 2))
    return scheme.layout(weight.shape).reduce(scaled) / (weight.shape[0] * max(output_ms, 1e-12))


def output_error_masks(
    layers: Mapping[str, nn.Module],
    scheme: SparsityScheme,
    stats: InputStatistics,
    flops: FlopsReport,
    remove_macs: float,
) -> dict[str, torch.Tensor]:
    """Masks over ``layers`` that remove at least ``remove_macs`` dense MACs (counted per unit from
    ``flops``, the dense report) with the least relative output error: every layer's units ranked
    together by error per removed MAC, cheapest first (units already zero cost nothing and go
    first); at least one unit of each layer is kept.  Raises when the layers hold fewer MACs."""
    by_name = {layer.name: layer for layer in flops.layers}
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise SparsityError(f"layers {missing} are not run by the model")
    if not stats.ready():
        raise SparsityError(
            "no input statistics yet: the layers must run (in training mode) before units are ranked"
        )
    costs, macs, kept = [], [], []
    for name, m in layers.items():
        lay = scheme.layout(m.weight.shape)
        err = unit_output_errors(
            m.weight, scheme, stats.input_mean_square(name), stats.output_mean_square(name)
        )
        unit_macs = lay.sizes.double() * (by_name[name].dense_macs / m.weight.numel())
        cost = err.double() / unit_macs.clamp_min(1e-12)
        last = torch.zeros_like(cost, dtype=torch.bool)
        last[cost.argmax()] = True  # each layer's most costly unit stays: no layer is emptied
        costs.append(cost)
        macs.append(unit_macs)
        kept.append(last)
    cost, mac, last = torch.cat(costs), torch.cat(macs), torch.cat(kept)
    if float(mac[~last].sum()) < remove_macs:
        raise SparsityError(
            f"the pruned layers hold {float(mac[~last].sum()) / 1e6:.1f} removable MMACs, "
            f"{remove_macs / 1e6:.1f} asked for"
        )
    removed = torch.zeros_like(last)
    if remove_macs > 0:
        order = torch.argsort(cost.masked_fill(last, float("inf")), stable=True)
        taken = int((mac[order].cumsum(0) < remove_macs).sum()) + 1
        removed[order[:taken]] = True
    per_layer = removed.split([len(c) for c in costs])
    masks = {
        name: scheme.mask_from_units(tuple(m.weight.shape), ~gone)
        for (name, m), gone in zip(layers.items(), per_layer, strict=True)
    }
    return masks
