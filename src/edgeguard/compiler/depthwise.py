"""Generated CPU depthwise convolution: MobileNet-style graphs spend a quarter of their time in
depthwise convs, which PyTorch's CPU path runs far below the core's multiply-add rate; pruning
does not touch them, so without a faster kernel they cap the end-to-end speedup."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompileError
from .generated import INT, VOID_P, GeneratedKernelModule, capped_relu, kernel_cap


def depthwise_supported(conv: nn.Module) -> bool:
    """A 2-D conv with one group per input channel (any channel multiplier), no dilation, zero
    numeric padding."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == conv.in_channels
        and conv.groups > 1
        and conv.out_channels % conv.in_channels == 0
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


class DepthwiseConvCpu(GeneratedKernelModule):
    """A depthwise ``nn.Conv2d`` (see :func:`depthwise_supported`) with an optional zero padding
    ``pads`` = (left, right, top, bottom) in place of the conv's own (TF's SAME padding, odd pixel
    after, arrives as a separate ``F.pad``) and an optional fused ReLU; a kernel is generated and
    built per input size.  Input/output NCHW float32."""

    two_d = False  # build_kernels: the input shape is used as it is (4-D)
    symbol = "edgeguard_dwconv"
    argtypes = (VOID_P, VOID_P, VOID_P, VOID_P, INT, INT)

    def __init__(
        self,
        conv: nn.Conv2d,
        name: str = "depthwise",
        pads: tuple[int, int, int, int] | None = None,
        relu: bool = False,
        cap: float = math.inf,
    ) -> None:
        super().__init__(name)
        if not depthwise_supported(conv):
            raise CompileError(
                f"{name}: not a depthwise conv the cpu kernel takes (groups = in_channels, "
                "no dilation, zero padding)"
            )
        ph, pw = conv.padding
        self.pads = tuple(int(p) for p in pads) if pads is not None else (pw, pw, ph, ph)
        if len(self.pads) != 4 or min(self.pads) < 0:
            raise CompileError(f"{name}: pads must be 4 non-negative integers, got {pads}")
        self.weight = nn.Parameter(conv.weight.detach().float().clone(), requires_grad=False)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.bias = nn.Parameter(
            bias.clone() if bias is not None else torch.zeros(conv.out_channels),
            requires_grad=False,
        )
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.multiplier = conv.out_channels // conv.in_channels
        self.relu = relu
        self.cap = float(cap)  # the ReLU capped at this (ReLU6: 6); inf: not capped
        if self.cap <= 0:
            raise CompileError(f"{name}: cap must be > 0, got {cap!r}")

    def out_size(self, hi: int, wi: int) -> tuple[int, int]:
        (pl, pr, pt, pb), (kh, kw), (sh, sw) = self.pads, self.kernel_size, self.stride
        return (hi + pt + pb - kh) // sh + 1, (wi + pl + pr - kw) // sw + 1

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, None]:
        c, hi, wi = x.shape[1:]
        ho, wo = self.out_size(hi, wi)
        if ho < 1 or wo < 1:
            raise CompileError(f"{self.name}: input {hi}x{wi} is smaller than the kernel")
        (kh, kw), (sh, sw), (pl, _, pt, _) = self.kernel_size, self.stride, self.pads
        # vectors of outputs per register tile: the fewest wasted lanes in a row, then the most
        nvec = -(-wo // vector_floats)
        nt = min((-(-nvec // k) * k, -k, k) for k in (4, 3, 2, 1))[2]
        return self.render(
            "depthwise.cpp",
            f"depthwise conv {self.name}",
            {"C": c, "M": self.multiplier, "HI": hi, "WI": wi, "HO": ho, "WO": wo},
            {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "PT": pt, "PL": pl},
            {"RELU": self.relu, "VL": vector_floats, "NT": nt},
            {"CAP": kernel_cap(self.cap)},
        )

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(
            F.pad(x, self.pads),
            self.weight,
            self.bias,
            self.stride,
            groups=self.weight.shape[0] // self.multiplier,
        )
        return capped_relu(y, self.cap) if self.relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standard_path(x):
            return self.forward_torch(x)
        shape = (x.shape[0], self.weight.shape[0], *self.out_size(*x.shape[2:]))
        return self.run_kernel(x, shape, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[0]}, kernel={self.kernel_size}, stride={self.stride}, "
            f"pads={self.pads}, relu={self.relu}"
            + (f", cap={self.cap:g}" if self.cap < math.inf else "")
        )
