"""Sparsity plans: what a masked convolution keeps, in the form the kernels consume.

A convolution with weight ``W[M, C, kd, kh, kw]`` is viewed as ``W[M, R]`` with one *row* per input
(channel, kernel location) pair, ``R = C * kd * kh * kw``.  The plan cuts the kept filters into blocks
of ``mr`` filters; each block stores the rows that any of its filters uses (for KGS and vanilla with
``mr`` dividing ``gm`` this is exactly the kernel group's kept units, so no zero is stored) and the
weights as a dense ``[K_b, mr]`` panel: compact storage, one row index per ``mr`` weights, no
per-weight index.  Filters are sorted by their row pattern first, so filters that share a pattern share
a block, and blocks are ordered longest first so that dynamic scheduling balances the threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..masks import mask_of
from .errors import CompileError


def numeric_padding(conv: nn.Module) -> tuple[int, ...] | None:
    """The conv's padding as numbers per dim: ``"valid"`` is 0, ``"same"`` is ``d * (k - 1) / 2``
    where that is a whole number (otherwise torch pads one side more: None)."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


@dataclass(frozen=True)
class ConvGeometry:
    """Shape-independent hyperparameters of a 3D convolution (2D convs use depth 1)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d | nn.Conv3d) -> ConvGeometry:
        def three(v, fill):
            v = tuple(v)
            return (fill, *v) if len(v) == 2 else v

        padding = numeric_padding(conv)
        if padding is None:
            raise CompileError(
                f"padding {conv.padding!r} with even dilation*(kernel-1) pads unevenly; give numbers"
            )
        if conv.padding_mode != "zeros":
            raise CompileError(
                f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
            )
        if conv.groups != 1:
            raise CompileError("grouped convolutions are not supported")
        return cls(
            conv.in_channels,
            conv.out_channels,
            three(conv.kernel_size, 1),
            three(conv.stride, 1),
            three(padding, 0),
            three(conv.dilation, 1),
        )

    @property
    def locations(self) -> int:
        kd, kh, kw = self.kernel
        return kd * kh * kw

    def output_size(self, size: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                size, self.padding, self.dilation, self.kernel, self.stride, strict=True
            )
        )


@dataclass
class SparsePlan:
    """Blocked row-sparse form of one convolution.

    Attributes:
        geometry: the convolution's hyperparameters.
        mr: filters per block.
        filters: ``[NB * mr]`` int64, original filter index of each block slot (``-1`` = padding slot).
        block_rows: list of ``NB`` int64 tensors, the kept row ids of each block in increasing order
            (row id = ``c * L + (kd * KH + kh) * KW + kw``).
        panels: list of ``NB`` float32 tensors ``[K_b, mr]``, the block weights.
        bias: ``[M]`` float32, zeros when the layer has none.
        dead: int64 ids of filters with no kept weight (their output is the bias).
        kept_macs_per_position: sum over blocks of ``K_b * mr`` real (non-padding) MACs.
    """

    geometry: ConvGeometry
    mr: int
    filters: torch.Tensor
    block_rows: list[torch.Tensor]
    panels: list[torch.Tensor]
    bias: torch.Tensor
    dead: torch.Tensor
    kept_weights: int

    @property
    def density(self) -> float:
        """Stored panel entries (what the kernel multiplies, incl. the padding slots of partial
        blocks) over dense weights; 1 or more means no saving at all."""
        stored = sum(p.numel() for p in self.panels)
        g = self.geometry
        return stored / max(1, g.out_channels * g.in_channels * g.locations)


def conv_weight(conv: nn.Module) -> torch.Tensor:
    """The effective weight of a (possibly masked) conv, as float32 ``[M, C, kd, kh, kw]``."""
    w = conv.weight.detach()
    mask = mask_of(conv)
    if mask is not None:
        w = w * mask
    w = w.float()
    return w if w.dim() == 5 else w.unsqueeze(2)


def make_plan(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    mr: int = 4,
    by_pattern: bool = False,
) -> SparsePlan:
    """Build the blocked plan of a weight ``[M, C, kd, kh, kw]`` whose pruned entries are exactly 0.

    Filters sorted by row pattern are cut into blocks of ``mr``; ``by_pattern``: a block never
    mixes two patterns (a run of filters with one pattern ends its last block with empty slots),
    which stores less where the pattern groups do not divide by ``mr`` (KGS with 3 filters per
    group in blocks of 4 stores a quarter more, not the union of two groups' rows)."""
    if weight.dim() != 5:
        raise CompileError(f"weight must be [M, C, kd, kh, kw], got shape {tuple(weight.shape)}")
    m = weight.shape[0]
    w2 = weight.reshape(m, -1)
    nz = w2 != 0
    alive = nz.any(1)
    dead = torch.nonzero(~alive).flatten()
    live = torch.nonzero(alive).flatten()
    # Sort live filters by row pattern so identical patterns are adjacent (one block, no union waste).
    if len(live):
        pat = [p.tobytes() for p in nz[live].to(torch.uint8).numpy()]
        order = sorted(range(len(live)), key=lambda i: pat[i], reverse=True)
        live = live[torch.tensor(order, dtype=torch.int64)]
    cuts = list(range(0, len(live), mr))
    if by_pattern and len(live):
        cuts, start = [], 0
        keys = [pat[i] for i in order]
        for i in range(1, len(live) + 1):
            if i == len(live) or keys[i] != keys[start]:
                cuts += range(start, i, mr)
                start = i
    blocks = []
    for k, s in enumerate(cuts):
        end = min(s + mr, cuts[k + 1] if k + 1 < len(cuts) else len(live))
        ids = live[s:end]
        rows = torch.nonzero(nz[ids].any(0)).flatten()
        panel = torch.zeros(len(rows), mr)
        panel[:, : len(ids)] = w2[ids][:, rows].T
        slot = torch.full((mr,), -1, dtype=torch.int64)
        slot[: len(ids)] = ids
        blocks.append((rows, panel, slot))
    blocks.sort(key=lambda b: -len(b[0]))  # longest first: dynamic scheduling balances the threads
    b = bias.detach().float().clone() if bias is not None else torch.zeros(m)
    return SparsePlan(
        geometry=geometry,
        mr=mr,
        filters=torch.cat([s for _, _, s in blocks])
        if blocks
        else torch.zeros(0, dtype=torch.int64),
        block_rows=[r for r, _, _ in blocks],
        panels=[p for _, p, _ in blocks],
        bias=b,
        dead=dead,
        kept_weights=int(nz.sum()),
    )


def plan_conv(conv: nn.Conv2d | nn.Conv3d, mr: int = 4) -> SparsePlan:
    """:func:`make_plan` of a (masked) ``nn.Conv2d``/``nn.Conv3d``."""
    return make_plan(conv_weight(conv), conv.bias, ConvGeometry.of(conv), mr)
