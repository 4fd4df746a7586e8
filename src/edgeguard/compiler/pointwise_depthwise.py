"""A MobileNet block's 1x1 expand conv and the depthwise conv after it as one generated CPU kernel.

The expand conv's output is the largest tensor of such a block (CenterNet's first stride-2 block:
64 planes of 256 x 256, 16 MB) and the depthwise conv reads it straight back; pruned, the 1x1
does a few multiply-adds per value it writes, so both layers are bound by moving that tensor
through memory, not by their arithmetic (docs/compiler.md).  Here it never leaves the cache: the
kernel expands one band of rows of one channel at a time and runs the depthwise taps on it at
once (``kernels/pw_depthwise.cpp``)."""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise import depthwise_supported
from .errors import CompileError
from .generated import INT, VOID_P, GeneratedKernelModule, capped_relu, kernel_cap

ACTIVATIONS = ("none", "relu", "hard_swish")

# input bytes of one band (every input channel's padded rows): about a quarter of a core's L2
BAND_BYTES = 256 * 1024
# work items (bands x filter groups) to aim for, so that every thread gets several
MIN_ITEMS = 8
# filters expanded together: each input vector loaded serves this many (4 x NT accumulators stay
# in registers)
FILTER_BLOCK = 4


def pointwise_supported(conv: nn.Module) -> bool:
    """A 2-D 1x1 conv, stride 1, no padding or dilation, one group: a pure channel mix."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding in ((0, 0), "valid")
    )


def fusable_depthwise(conv: nn.Module) -> bool:
    """A depthwise conv the fused kernel takes: :func:`depthwise_supported`, one output per channel."""
    return depthwise_supported(conv) and conv.out_channels == conv.in_channels


class PointwiseDepthwiseCpu(GeneratedKernelModule):
    """``relu?(depthwise(pad(act(pointwise(x)))))`` in one kernel: ``pointwise`` a 1x1 conv
    (:func:`pointwise_supported`; its zero weights are skipped), ``act`` ``"none"``, ``"relu"``
    or ``"hard_swish"`` (``act_scale * y * relu6(y + 3)``, as :mod:`.passes.hard_swish` leaves
    MobileNetV3's), ``pads`` = (left, right, top, bottom) zeros around the expanded plane added
    to the depthwise conv's own, ``depthwise`` a depthwise conv with one filter per channel.
    Input ``[N, C, H, W]`` float32, output ``[N, F, HO, WO]``; a kernel per input size."""

    two_d = False  # build_kernels: the input shape is used as it is (4-D)
    symbol = "edgeguard_pwdw"
    argtypes = (VOID_P,) * 8 + (INT, INT, ctypes.c_float)

    def __init__(
        self,
        pointwise: nn.Conv2d,
        depthwise: nn.Conv2d,
        name: str = "pointwise_depthwise",
        act: str = "none",
        act_scale: float = 1.0,
        pads: tuple[int, int, int, int] = (0, 0, 0, 0),
        relu: bool = False,
        pw_cap: float = math.inf,
        cap: float = math.inf,
    ) -> None:
        super().__init__(name)
        if not pointwise_supported(pointwise):
            raise CompileError(f"{name}: the first conv must be a 1x1, stride 1, unpadded conv")
        if not fusable_depthwise(depthwise):
            raise CompileError(
                f"{name}: the second conv must be depthwise with one filter per channel, no "
                "dilation, zero padding"
            )
        if depthwise.in_channels != pointwise.out_channels:
            raise CompileError(
                f"{name}: the 1x1 conv gives {pointwise.out_channels} channels, the depthwise "
                f"conv takes {depthwise.in_channels}"
            )
        if act not in ACTIVATIONS:
            raise CompileError(f"{name}: act must be one of {ACTIVATIONS}, got {act!r}")
        if len(pads) != 4 or min(pads) < 0:
            raise CompileError(f"{name}: pads must be 4 non-negative integers, got {pads}")
        w = pointwise.weight.detach().float()[:, :, 0, 0]  # [F, C]
        f = w.shape[0]
        zeros = torch.zeros(f)
        self.register_buffer("pw_weight", w.clone())  # the torch path and ONNX export
        self.register_buffer(
            "pw_bias",
            pointwise.bias.detach().float().clone() if pointwise.bias is not None else zeros,
        )
        # blocks of FILTER_BLOCK consecutive filters: the union of their kept input channels and
        # a [channel][filter] weight panel (zeros where a filter skips a channel)
        nblk = -(-f // FILTER_BLOCK)
        wp = torch.zeros(nblk * FILTER_BLOCK, w.shape[1])
        wp[:f] = w
        bp = torch.zeros(nblk * FILTER_BLOCK)
        bp[:f] = self.pw_bias
        off, idx, val = [0], [], []
        for blk in wp.view(nblk, FILTER_BLOCK, -1):
            chans = (blk != 0).any(0).nonzero().squeeze(1)
            idx.append(chans)
            val.append(blk[:, chans].T.reshape(-1))
            off.append(off[-1] + len(chans))
        self.register_buffer("off", torch.tensor(off, dtype=torch.int32))
        self.register_buffer("idx", torch.cat(idx).to(torch.int32).contiguous())
        self.register_buffer("val", torch.cat(val).contiguous())
        self.register_buffer("block_bias", bp)
        self.kept = int((w != 0).sum())
        self.register_buffer("dw_weight", depthwise.weight.detach().float().clone())
        self.register_buffer(
            "dw_bias",
            depthwise.bias.detach().float().clone()
            if depthwise.bias is not None
            else zeros.clone(),
        )
        ph, pw = depthwise.padding
        self.pads = tuple(int(a) + b for a, b in zip(pads, (pw, pw, ph, ph), strict=True))
        self.kernel_size = tuple(depthwise.kernel_size)
        self.stride = tuple(depthwise.stride)
        self.act, self.act_scale, self.relu = act, float(act_scale), relu
        # the ReLU after the 1x1 (act "relu") and the one after the depthwise conv, capped at
        # these (ReLU6: 6); inf: not capped
        self.pw_cap, self.cap = float(pw_cap), float(cap)
        if min(self.pw_cap, self.cap) <= 0:
            raise CompileError(f"{name}: caps must be > 0, got {pw_cap!r} and {cap!r}")
        self.in_channels = w.shape[1]
        self.fused_from: tuple[str, str] = ("", name)  # (1x1 conv, depthwise conv) in the model

    @property
    def density(self) -> float:
        """Fraction of the 1x1 conv's weights the kernel multiplies."""
        return self.kept / max(self.pw_weight.numel(), 1)

    def out_size(self, hi: int, wi: int) -> tuple[int, int]:
        (pl, pr, pt, pb), (kh, kw), (sh, sw) = self.pads, self.kernel_size, self.stride
        return (hi + pt + pb - kh) // sh + 1, (wi + pl + pr - kw) // sw + 1

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, None]:
        c, hi, wi = x.shape[1:]
        if c != self.in_channels:
            raise CompileError(
                f"{self.name}: input has {c} channels, the 1x1 conv takes {self.in_channels}"
            )
        ho, wo = self.out_size(hi, wi)
        if ho < 1 or wo < 1:
            raise CompileError(f"{self.name}: input {hi}x{wi} is smaller than the kernel")
        (kh, kw), (sh, sw), (pl, _, pt, _) = self.kernel_size, self.stride, self.pads
        nvec = -(-wo // vector_floats)
        # 16 registers (AVX2, NEON) hold FILTER_BLOCK x 2 accumulators, 32 (AVX-512) x 4
        tiles = (4, 3, 2, 1) if vector_floats >= 16 else (2, 1)
        nt = min((-(-nvec // k) * k, -k, k) for k in tiles)[2]
        f = self.pw_weight.shape[0]
        wph = ((wo - 1) * sw + kw + sw - 1) // sw
        row_bytes = 4 * c * sw * wph
        rb = 1
        while rb < ho and ((rb * 2 - 1) * sh + kh) * row_bytes <= BAND_BYTES:
            rb *= 2
        nb = -(-ho // rb)
        fg = max(1, min(-(-f // FILTER_BLOCK), -(-MIN_ITEMS // nb)))
        return self.render(
            "pw_depthwise.cpp",
            f"1x1 conv + depthwise conv {self.name}",
            {"C": c, "F": f, "HI": hi, "WI": wi, "HO": ho, "WO": wo},
            {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "PT": pt, "PL": pl},
            {"ACT": ACTIVATIONS.index(self.act), "RELU": self.relu, "VL": vector_floats},
            {"PWCAP": kernel_cap(self.pw_cap), "CAP": kernel_cap(self.cap)},
            {"NT": nt, "RB": rb, "FB": FILTER_BLOCK, "FG": fg},
        )

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.pw_weight[:, :, None, None], self.pw_bias)
        if self.act == "relu":
            y = capped_relu(y, self.pw_cap)
        elif self.act == "hard_swish":
            y = F.hardswish(y) * (6.0 * self.act_scale)
        y = F.conv2d(
            F.pad(y, self.pads), self.dw_weight, self.dw_bias, self.stride, groups=y.shape[1]
        )
        return capped_relu(y, self.cap) if self.relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standard_path(x):
            return self.forward_torch(x)
        x = x.contiguous()
        kernel = self.kernel_for(x)
        out = self.output((x.shape[0], self.dw_weight.shape[0], *self.out_size(*x.shape[2:])))
        kernel(
            x.data_ptr(),
            self.off.data_ptr(),
            self.idx.data_ptr(),
            self.val.data_ptr(),
            self.block_bias.data_ptr(),
            self.dw_weight.data_ptr(),
            self.dw_bias.data_ptr(),
            out.data_ptr(),
            x.shape[0],
            torch.get_num_threads(),
            self.act_scale,
        )
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} -> {self.pw_weight.shape[0]}, act={self.act}, "
            f"density={self.density:.2f}, depthwise kernel={self.kernel_size}, "
            f"stride={self.stride}, pads={self.pads}, relu={self.relu}"
            + (f", pw_cap={self.pw_cap:g}" if self.pw_cap < math.inf else "")
            + (f", cap={self.cap:g}" if self.cap < math.inf else "")
        )
