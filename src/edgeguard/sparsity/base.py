"""The structured-sparsity protocol shared by every scheme.

A scheme partitions a layer's weight into *units* (groups of weights that are kept or removed whole),
scores each unit by its L2 norm per weight (RMS: a partial group at a layer's edge is not removed
first just for being smaller), and removes the ``round(rate * num_units)`` lowest-scoring units.
Weights are seen in their natural layout ``[F, C, *k]`` (F filters, C input channels, kernel ``k``) for
``Conv1d/2d/3d`` and ``[F, C]`` for ``Linear`` (a 0-d kernel, one location).  Every scheme is fully
described by ``_axis_groups``: a group id per filter, per channel and per kernel location, so
masking, scoring, projection and validation are written once here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import EdgeguardError
from ..registry import construct, lookup

SUPPORTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class SparsityError(EdgeguardError, ValueError):
    """Raised for invalid sparsity input: bad rates, shapes, layers, specs or masks."""


def check_rate(rate: Any, what: str = "rate") -> float:
    """Validate a pruning rate: the fraction of units removed, a real number in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise SparsityError(f"{what} must be a number in [0, 1), got {rate!r}")
    rate = float(rate)
    if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
        raise SparsityError(
            f"{what} must be in [0, 1) (the fraction of units removed; 1 would remove the whole "
            f"layer), got {rate}"
        )
    return rate


def check_layer(module: nn.Module, name: str = "layer") -> None:
    """Raise a clear error for layers no scheme supports."""
    if not isinstance(module, SUPPORTED_LAYERS):
        raise SparsityError(
            f"{name}: unsupported layer type {type(module).__name__}; structured sparsity supports "
            "Conv1d, Conv2d, Conv3d and Linear"
        )
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups != 1:
        raise SparsityError(
            f"{name}: grouped/depthwise convolutions (groups={module.groups}) are not supported; "
            "only groups=1"
        )


@dataclass(frozen=True)
class UnitLayout:
    """How a weight ``[F, C, *kernel]`` splits into units, factorised per axis.

    Every scheme's unit of weight ``(f, c, l)`` (``l`` = flat kernel location) is
    ``(filter_group[f] * n_c + channel_group[c]) * n_k + location_group[l]``, so reductions and mask
    expansions are three cheap index operations instead of a per-weight index.

    Attributes:
        shape: the weight shape.
        filter_group, channel_group, location_group: int64 ``[F]``, ``[C]``, ``[K]`` group ids.
        n_f, n_c, n_k: number of groups along each axis; ``num_units = n_f * n_c * n_k``.
    """

    shape: tuple[int, ...]
    filter_group: torch.Tensor
    channel_group: torch.Tensor
    location_group: torch.Tensor
    n_f: int
    n_c: int
    n_k: int

    @property
    def num_units(self) -> int:
        return self.n_f * self.n_c * self.n_k

    @property
    def sizes(self) -> torch.Tensor:
        """int64 ``[num_units]``: weights per unit (partial groups are smaller)."""
        bf = torch.bincount(self.filter_group, minlength=self.n_f)
        bc = torch.bincount(self.channel_group, minlength=self.n_c)
        bk = torch.bincount(self.location_group, minlength=self.n_k)
        return (bf.view(-1, 1, 1) * bc.view(1, -1, 1) * bk.view(1, 1, -1)).flatten()

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a weight-shaped tensor over each unit -> ``[num_units]``."""
        f, c = self.shape[:2]
        v = values.reshape(f, c, -1)
        dev = v.device
        v = v.new_zeros(self.n_f, c, v.shape[2]).index_add(0, self.filter_group.to(dev), v)
        v = v.new_zeros(self.n_f, self.n_c, v.shape[2]).index_add(1, self.channel_group.to(dev), v)
        v = v.new_zeros(self.n_f, self.n_c, self.n_k).index_add(2, self.location_group.to(dev), v)
        return v.flatten()

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """Broadcast a ``[num_units]`` tensor to the weight's shape."""
        u = per_unit.reshape(self.n_f, self.n_c, self.n_k)
        dev = u.device
        u = u.index_select(0, self.filter_group.to(dev))
        u = u.index_select(1, self.channel_group.to(dev))
        u = u.index_select(2, self.location_group.to(dev))
        return u.reshape(self.shape)

    def unit_index(self) -> torch.Tensor:
        """The unit of every weight, int64 of the weight's shape (materialised; for inspection)."""
        return self.expand(torch.arange(self.num_units))


class SparsityScheme(ABC):
    """One structure of structured sparsity.  Subclasses define ``_axis_groups`` only."""

    name: ClassVar[str]

    def options(self) -> dict[str, Any]:
        """The constructor options, JSON-serialisable (stored in sparsity specs)."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.options()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    @abstractmethod
    def _axis_groups(
        self, f: int, c: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group ids along filters ``[f]``, channels ``[c]`` and kernel locations ``[k]``, each
        numbered 0, 1, ... without gaps."""

    def layout(self, shape: torch.Size | tuple[int, ...]) -> UnitLayout:
        """Units of a weight of ``shape`` = ``[F, C, *kernel]`` (``[F, C]`` for Linear)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise SparsityError(
                f"{self.name}: expected a weight of shape [F, C, *kernel] with positive sizes, got "
                f"{list(shape)}"
            )
        f, c = shape[:2]
        k = math.prod(shape[2:])
        gf, gc, gk = (g.to(torch.int64) for g in self._axis_groups(f, c, k))
        return UnitLayout(
            shape=shape,
            filter_group=gf,
            channel_group=gc,
            location_group=gk,
            n_f=int(gf.max()) + 1,
            n_c=int(gc.max()) + 1,
            n_k=int(gk.max()) + 1,
        )

    def num_units(self, shape: torch.Size | tuple[int, ...]) -> int:
        return self.layout(shape).num_units

    def unit_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """L2 norm of every unit, ``[num_units]``, differentiable w.r.t. ``weight``."""
        return self.unit_sq_norms(weight).clamp_min(0).sqrt()

    def unit_sq_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """Squared L2 norm of every unit, ``[num_units]``, differentiable w.r.t. ``weight``."""
        return self.layout(weight.shape).reduce(weight.square())

    def _check_weight(self, weight: torch.Tensor) -> None:
        if not isinstance(weight, torch.Tensor):
            raise SparsityError(f"{self.name}: weight must be a torch.Tensor, got {type(weight)}")
        if not weight.is_floating_point():
            raise SparsityError(f"{self.name}: weight must be floating point, got {weight.dtype}")
        if not torch.isfinite(weight).all():
            raise SparsityError(
                f"{self.name}: weight contains NaN or Inf; cannot rank units by norm"
            )

    def removal_order(self, weight: torch.Tensor) -> torch.Tensor:
        """Unit ids from first to last removed: ascending mean square per weight (the unit's L2
        norm normalised by its size), ties by unit id."""
        self._check_weight(weight)
        w = weight.detach().float()
        layout = self.layout(w.shape)
        scores = layout.reduce(w.square()).cpu() / layout.sizes.to(torch.float32)
        return torch.argsort(scores, stable=True)

    def unit_mask(self, weight: torch.Tensor, rate: float) -> torch.Tensor:
        """Boolean ``[num_units]``: True for kept units.  Removes exactly ``round(rate*U)`` units,
        those with the smallest size-normalised L2 norm (ties broken by unit order, deterministically)."""
        rate = check_rate(rate)
        order = self.removal_order(weight)
        keep = torch.ones(order.numel(), dtype=torch.bool)
        keep[order[: round(rate * order.numel())]] = False
        return keep

    def mask(self, weight: torch.Tensor, rate: float) -> torch.Tensor:
        """Boolean keep-mask of ``weight``'s shape, removing ``round(rate * num_units)`` whole units.

        Args:
            weight: ``[F, C, *kernel]`` float tensor (Conv) or ``[F, C]`` (Linear).
            rate: fraction of units removed, in [0, 1).
        """
        keep = self.unit_mask(weight, rate)
        return self.layout(weight.shape).expand(keep).to(weight.device)

    def project(self, weight: torch.Tensor, rate: float) -> torch.Tensor:
        """Euclidean projection of ``weight`` onto the set with at most ``U - round(rate*U)`` nonzero
        units (keep the largest-norm units, zero the rest).  Returns a new tensor."""
        return weight * self.mask(weight, rate)

    def mask_from_units(self, shape: tuple[int, ...], keep: torch.Tensor) -> torch.Tensor:
        """Expand a per-unit keep vector ``[num_units]`` to a weight-shaped mask."""
        lay = self.layout(shape)
        if tuple(keep.shape) != (lay.num_units,):
            raise SparsityError(
                f"{self.name}: expected {lay.num_units} unit flags, got {tuple(keep.shape)}"
            )
        return lay.expand(keep.bool().cpu())

    def units_of_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-unit keep flags of a weight-shaped mask; raises if the mask splits any unit."""
        lay = self.layout(mask.shape)
        kept = lay.reduce(mask.detach().cpu().to(torch.int64))
        if not bool(((kept == 0) | (kept == lay.sizes)).all()):
            raise SparsityError(
                f"mask does not follow the {self.name!r} structure: some units are only partly kept"
            )
        return kept > 0

    def is_structured(self, mask: torch.Tensor) -> bool:
        """Whether ``mask`` keeps or removes every unit whole."""
        try:
            self.units_of_mask(mask)
        except SparsityError:
            return False
        return True


_REGISTRY: dict[str, type[SparsityScheme]] = {}


def register_scheme(cls: type[SparsityScheme]) -> type[SparsityScheme]:
    """Class decorator: make a scheme available to ``get_scheme(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_schemes() -> list[str]:
    return sorted(_REGISTRY)


def get_scheme(name: str | SparsityScheme, **options: Any) -> SparsityScheme:
    """Build a scheme by name: one of ``available_schemes()``, e.g. ``get_scheme("kgs", gm=8, gn=4)``."""
    if isinstance(name, SparsityScheme):
        if options:
            raise SparsityError("options cannot be given together with a scheme instance")
        return name
    cls = lookup(_REGISTRY, name, "sparsity scheme", SparsityError)
    return construct(cls, name, "sparsity scheme", SparsityError, **options)


def scheme_from_spec(spec: dict[str, Any]) -> SparsityScheme:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise SparsityError(f"sparsity spec has no scheme name: {spec!r}")
    return get_scheme(name, **spec)
