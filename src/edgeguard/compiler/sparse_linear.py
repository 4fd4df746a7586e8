"""``SparseLinear``: a pruned ``nn.Linear`` run by the generated sparse kernels.

A linear layer ``y[N, F] = x[N, C] W[F, C]^T + b`` is a 1x1x1 convolution whose output positions are
the ``N`` rows of the batch: ``x^T`` viewed as ``[1, C, 1, 1, N]``.  Run that way by
:class:`~.sparse_conv.SparseConv`, every kept weight is read once per call and no pruned one is read
at all.  That is what matters at small batch, where a dense fully connected layer is bound by reading
its weights from memory (C3D's fc6 + fc7 hold 200 MB; pruned 3.6x they keep 56 MB).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import CompileError
from .plan import ConvGeometry, make_plan
from .sparse_conv import SparseConv


class SparseLinear(nn.Module):
    """Computes ``x @ W^T + b`` (then ReLU when ``relu``) for a weight ``W [F, C]`` whose pruned
    entries are exact zeros.  Input ``[..., C]`` float32, output ``[..., F]``.

    ``mode``, ``mr`` and ``nv`` as for :class:`SparseConv`; ``groups``: the filter blocks are
    split into this many tasks (a batch of one sample is a single tile, so the threads share the
    work by blocks, not by positions)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        relu: bool = False,
        mode: str = "torch",
        mr: int = 8,
        nv: int | None = 2,
        groups: int = 16,
        name: str = "linear",
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise CompileError(
                f"{name}: expected a [out_features, in_features] weight, got {tuple(weight.shape)}"
            )
        f, c = weight.shape
        geometry = ConvGeometry(c, f, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1))
        plan = make_plan(weight.detach().float()[:, :, None, None, None], bias, geometry, mr)
        self.in_features, self.out_features = c, f
        self.conv = SparseConv(plan, relu=relu, mode=mode, nv=nv, name=name, fg=groups)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> SparseLinear:
        return cls(linear.weight, linear.bias, **kwargs)

    @property
    def density(self) -> float:
        return self.conv.plan.density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise CompileError(
                f"{self.conv.name}: expected [..., {self.in_features}] input, got {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        y = self.conv(rows.t().reshape(1, self.in_features, 1, 1, n))
        # the conv's output buffer may be reused by the next call: hand out a copy in [N, F]
        # (clone, not contiguous(): at N = 1 the transposed view already counts as contiguous)
        out = y.reshape(self.out_features, n).t().clone(memory_format=torch.contiguous_format)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={self.density:.3f}, mode={self.conv.mode}"
        )
