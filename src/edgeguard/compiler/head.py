"""Generated CPU classifier head: global average pooling, flatten and a dense ``nn.Linear`` in one
kernel.  Three PyTorch calls on a few kilobytes ran 50 us each at batch 1 right after the convs
(their dispatch cache-cold); as a kernel the head also joins the replayed run of kernel layers
before it (``replay.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompileError
from .generated import INT, VOID_P, GeneratedKernelModule


class PooledLinearCpu(GeneratedKernelModule):
    """``linear(flatten(adaptive_avg_pool(x, 1), 1))`` (or an average pool whose ``window`` is the
    whole plane) for an input ``[N, C, H, W]`` (or
    ``[N, C, D, H, W]``) float32; output ``[N, out_features]``.  A kernel is generated and built
    per input size; other dtypes, an ONNX export and the torch mode run the three PyTorch ops."""

    two_d = False  # build_kernels: the input shape is used as it is
    symbol = "edgeguard_head"
    argtypes = (VOID_P, VOID_P, VOID_P, VOID_P, INT, INT)

    def __init__(
        self,
        linear: nn.Linear,
        name: str = "head",
        dims: int = 2,
        window: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(name)
        self.dims = dims  # the pool's: 2 (NCHW input) or 3 (NCDHW)
        # an average pool's window (stride = window, no padding) that the model spelled the
        # global pool with: global only where it is the input's plane; another plane size runs
        # the model's own ops (pool, flatten, linear).  None: an adaptive pool to 1, a mean.
        self.window = tuple(window) if window is not None else None
        self.weight = nn.Parameter(linear.weight.detach().float().clone(), requires_grad=False)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.bias = nn.Parameter(
            bias.clone() if bias is not None else torch.zeros(linear.out_features),
            requires_grad=False,
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_features or x.numel() == 0:
            dims = "H, W" if self.dims == 2 else "D, H, W"
            raise CompileError(
                f"{self.name}: expected a non-empty input [N, {self.in_features}, {dims}], "
                f"got {tuple(x.shape)}"
            )

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, None]:
        self._check(x)
        return self.render(
            "head.cpp",
            f"global average pool + linear {self.name}",
            {"C": x.shape[1], "HW": math.prod(x.shape[2:]), "M": self.out_features},
        )

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is not None:
            pool = F.avg_pool2d if self.dims == 2 else F.avg_pool3d
            return F.linear(torch.flatten(pool(x, self.window), 1), self.weight, self.bias)
        pool = F.adaptive_avg_pool2d if self.dims == 2 else F.adaptive_avg_pool3d
        return F.linear(torch.flatten(pool(x, 1), 1), self.weight, self.bias)

    def runs_kernel(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of ``shape`` runs the kernel (a window pool: where it is the whole
        plane) rather than the model's own ops."""
        return self.window is None or tuple(shape[2:]) == self.window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_kernel(tuple(x.shape)):
            return self.forward_torch(x)  # not the whole plane: the model's own ops
        self._check(x)
        if self.standard_path(x):
            return self.forward_torch(x)
        return self.run_kernel(x, (x.shape[0], self.out_features), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
