"""Generated CPU max pooling (PyTorch's CPU max_pool3d computes indices even in inference, and was
a fifth of compiled C3D's time)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .calls import exporting
from .errors import CompileError
from .generated import INT, VOID_P, GeneratedKernelModule


def _three(v, fill, dims: int) -> tuple[int, int, int]:
    """A pooling hyperparameter of a ``dims``-D pool as (depth, height, width); a 2D pool gets
    ``fill`` as its depth (it runs as a 3D pool over a depth of 1)."""
    v = tuple(v) if isinstance(v, tuple | list) else (v,) * dims
    return (fill, *v) if dims == 2 else v


class MaxPoolCpu(GeneratedKernelModule):
    """``nn.MaxPool2d/3d`` (no dilation, floor mode) run by a kernel generated per input size."""

    symbol = "edgeguard_pool"
    argtypes = (VOID_P, VOID_P, INT, INT)

    def __init__(self, pool: nn.MaxPool2d | nn.MaxPool3d, name: str = "pool") -> None:
        super().__init__(name)
        if not supported(pool):
            raise CompileError(f"{name}: dilation, ceil_mode or return_indices are not supported")
        self.two_d = isinstance(pool, nn.MaxPool2d)
        dims = 2 if self.two_d else 3
        self.kernel = _three(pool.kernel_size, 1, dims)
        self.stride = _three(pool.stride or pool.kernel_size, 1, dims)
        self.padding = _three(pool.padding, 0, dims)

    def out_size(self, size):
        return tuple(
            (n + 2 * p - k) // s + 1
            for n, p, k, s in zip(size, self.padding, self.kernel, self.stride, strict=True)
        )

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, None]:
        c, di, hi, wi = x.shape[1:]
        do, ho, wo = self.out_size((di, hi, wi))
        (kd, kh, kw), (sd, sh, sw), (pd, ph, pw) = self.kernel, self.stride, self.padding
        return self.render(
            "pool.cpp",
            f"max pool {self.name}",
            {"C": c, "DI": di, "HI": hi, "WI": wi, "DO": do, "HO": ho, "WO": wo},
            {"KD": kd, "KH": kh, "KW": kw, "SD": sd, "SH": sh, "SW": sw},
            {"PD": pd, "PH": ph, "PW": pw},
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "torch" or exporting() or x.dtype != torch.float32:
            if self.two_d:  # a 2-D pool (ONNX: one MaxPool, not Unsqueeze + a 3-D one + Squeeze)
                return F.max_pool2d(x, self.kernel[1:], self.stride[1:], self.padding[1:])
            return F.max_pool3d(x, self.kernel, self.stride, self.padding)
        x5 = x.unsqueeze(2) if self.two_d else x
        out = self.run_kernel(x5, (*x5.shape[:2], *self.out_size(tuple(x5.shape[2:]))))
        return out.squeeze(2) if self.two_d else out


def supported(pool: nn.Module) -> bool:
    return (
        isinstance(pool, nn.MaxPool2d | nn.MaxPool3d)
        and not pool.ceil_mode
        and not pool.return_indices
        and all(
            d == 1 for d in _three(pool.dilation, 1, 2 if isinstance(pool, nn.MaxPool2d) else 3)
        )
    )
