"""Input layout shared by the generated kernels: zero padding and a polyphase split for strides.

The input ``[N, C, D, H, W]`` is zero padded and, for a stride ``s > 1`` along an axis, split into ``s``
phases along it (``x[..., i]`` goes to phase ``i % s`` at position ``i // s``).  A strided convolution
then reads, for every kernel location, a *contiguous* run of the buffer: output position ``(h, w)`` of
kernel location ``(kh, kw)`` is at ``row_offset + h * Wq + w``.  Output positions of one output depth
plane are numbered ``p = h * Wq + w`` (the ``Wq - Wo`` columns past the row end are computed and
dropped), so a kernel tile is ``T`` consecutive ``p`` and every kept row is one unit-stride load.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from .plan import ConvGeometry


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class InputLayout:
    """Geometry of the padded, phase-split input buffer of one conv at one input size."""

    geometry: ConvGeometry
    size: tuple[int, int, int]  # input D, H, W
    # Depth padding not stored: every kernel tap that would read it is skipped (depth_taps), so
    # the rows of plane d read the input planes d + kd - pd in place (see virtual_depth_fits).
    virtual_depth: bool = False
    # (row pitch, plane pitch) of an input read in place from a wide producer's buffer (its rows
    # end in columns the producer computed and dropped, see SparseConv.wide_out); None: rows of
    # the input's own width.  Only for layouts with no stored H/W padding at stride 1.
    pitch: tuple[int, int] | None = None
    # Planes ``plane_stride`` = ``Hq * Wq`` rounded up to 16 floats apart: the layout a producer
    # writes straight into (SparseConv.pad_reader), each plane's data on a 64-byte line.  Only for
    # stride 1 (no phases) with no stored depth padding.
    aligned_planes: bool = False
    # Width padding not stored (:meth:`masked_columns_fit`): rows are the input's own ``W``
    # floats, and a kernel reading kernel column ``kw`` for output column ``w`` masks the lanes
    # whose input column ``w + kw * dw - pw`` lies outside the row (AVX-512 masked loads), so a
    # plane narrower than a vector computes no padding column at all.
    masked_columns: bool = False

    def __post_init__(self) -> None:
        if self.masked_columns and not (
            self.pitch is None
            and not self.aligned_planes
            and not self.virtual_depth
            and self.geometry.stride[2] == 1
            and self.out[2] == self.size[2]
        ):
            raise ValueError(
                "masked columns need stride 1 along W, an output as wide as the input and no "
                "pitch, aligned planes or virtual depth"
            )
        if self.aligned_planes and (
            self.pitch is not None or self.phases != 1 or self.stored_padding[0]
        ):
            raise ValueError("aligned planes need stride 1, no pitch and no stored depth padding")
        if self.pitch is not None:
            g, (_, h, w) = self.geometry, self.size
            wq, ps = self.pitch
            if g.stride != (1, 1, 1) or g.padding[1:] != (0, 0) or wq < w or ps < h * wq:
                raise ValueError(
                    f"pitch {self.pitch} does not fit an in-place layout of {self.size}"
                )

    @staticmethod
    def masked_columns_fit(geometry: ConvGeometry, size: tuple[int, int, int], vl: int) -> bool:
        """Whether a CPU kernel of ``vl``-float vectors takes the input of ``size`` with
        :attr:`masked_columns`: AVX-512 (``vl`` 16), stride 1 along W, zero padding along W that
        keeps the width (``2 pw = (kw - 1) dw``), and output rows narrower than a vector that
        tile a whole number of vectors (``vl % Wo == 0``, ``Ho * Wo % vl == 0``): an 8 x 8 plane
        is then 4 vectors instead of 80 positions over rows padded to 9 or 10."""
        w = size[2]
        pw, kw, dw = geometry.padding[2], geometry.kernel[2], geometry.dilation[2]
        ho = geometry.output_size(size)[1]
        return (
            vl == 16
            and geometry.stride[2] == 1
            and pw > 0
            and 2 * pw == (kw - 1) * dw
            and w < vl
            and vl % w == 0
            and ho * w % vl == 0
        )

    @staticmethod
    def virtual_depth_fits(geometry: ConvGeometry, size: tuple[int, int, int]) -> bool:
        """Whether a CPU kernel can read the raw input of a conv padded along depth only (a
        temporal ``kd x 1 x 1`` conv) in place, with no padded copy: stride 1 on every axis and
        int32 row offsets (the padding rows are never read, their offsets would be negative)."""
        d, h, w = size
        return (
            geometry.stride == (1, 1, 1)
            and geometry.padding[0] > 0
            and geometry.padding[1:] == (0, 0)
            and geometry.in_channels * d * h * w + h * w < 2**31
        )

    # the derived sizes are read on every kernel call: worked out once per layout
    @cached_property
    def stored_padding(self) -> tuple[int, int, int]:
        """The padding the buffer holds (depth's is virtual with ``virtual_depth``)."""
        pd, ph, pw = self.geometry.padding
        return (0 if self.virtual_depth else pd, ph, 0 if self.masked_columns else pw)

    @cached_property
    def padded(self) -> tuple[int, int, int]:
        return tuple(n + 2 * p for n, p in zip(self.size, self.stored_padding, strict=True))

    @property
    def shares_columns(self) -> bool:
        """Rows share their zero columns: with stride 1 along W, a row is ``W + pw`` floats (``pw``
        zeros, then the ``W`` inputs) and its right padding is the next row's left padding.  The
        ``Wq - Wo`` columns computed and dropped per output row fall from ``2 pw`` to ``pw``: C3D's
        28-wide conv3 planes take 26 tiles of 32 positions instead of 27."""
        g = self.geometry
        pw, kw, dw = g.padding[2], g.kernel[2], g.dilation[2]
        return not self.masked_columns and g.stride[2] == 1 and 0 < pw <= (kw - 1) * dw

    @cached_property
    def phased(self) -> tuple[int, int, int]:
        """(Dq, Hq, Wq): per-phase extent of each axis."""
        dq, hq, wq = (
            _ceil_div(n, s) for n, s in zip(self.padded, self.geometry.stride, strict=True)
        )
        if self.shares_columns:
            wq = self.size[2] + self.geometry.padding[2]
        if self.pitch is not None:
            wq = self.pitch[0]
        return dq, hq, wq

    @cached_property
    def plane_stride(self) -> int:
        """Floats from one depth plane of the buffer to the next."""
        _, hq, wq = self.phased
        if self.aligned_planes:
            return -(-(hq * wq) // 16) * 16
        return self.pitch[1] if self.pitch is not None else hq * wq

    @cached_property
    def head(self) -> int:
        """Floats from the start of a plane of the buffer to its first input element (the
        stored padding rows and columns before it): where a producer writing into the buffer
        puts its position 0."""
        _, ph, pw = self.stored_padding
        return ph * self.phased[2] + pw

    @property
    def phases(self) -> int:
        sd, sh, sw = self.geometry.stride
        return sd * sh * sw

    @cached_property
    def out(self) -> tuple[int, int, int]:
        return self.geometry.output_size(self.size)

    @cached_property
    def batch_stride(self) -> int:
        return self.geometry.in_channels * self.phases * self.phased[0] * self.plane_stride

    @cached_property
    def positions(self) -> int:
        """P: flat output positions computed per output depth plane."""
        _, ho, wo = self.out
        return (ho - 1) * self.phased[2] + wo

    def depth_taps(self) -> list[tuple[int, int]]:
        """Per output depth plane ``d``, the kernel depths ``kd`` in ``[lo, hi)`` whose input plane
        ``d * sd + kd * dd - pd`` is real input rather than depth padding; the others multiply
        zeros, and the kernels skip them (``lo == hi``: the plane reads padding only)."""
        g = self.geometry
        taps = []
        for d in range(self.out[0]):
            ok = [
                k
                for k in range(g.kernel[0])
                if 0 <= d * g.stride[0] + k * g.dilation[0] - g.padding[0] < self.size[0]
            ]
            taps.append((ok[0], ok[-1] + 1) if ok else (0, 0))
        return taps

    @property
    def column_shift(self) -> int:
        """Floats a kernel subtracts from every :meth:`row_offsets` value: the width padding
        where it is not stored (:attr:`masked_columns`), else 0 (offsets stay non-negative)."""
        return self.geometry.padding[2] if self.masked_columns else 0

    def column_masks(self, rows: torch.Tensor, vl: int) -> torch.Tensor:
        """With :attr:`masked_columns`: per row id (as :meth:`row_offsets`), the ``vl``-bit lane
        mask of a vector of positions starting at a row start: bit ``l`` set where input column
        ``l % W + kw * dw - pw`` lies in the row."""
        g = self.geometry
        w = self.size[2]
        zw = (rows % g.kernel[2]) * g.dilation[2] - g.padding[2]
        col = torch.arange(vl) % w + zw[:, None]
        bits = ((col >= 0) & (col < w)).to(torch.int64) << torch.arange(vl)
        return bits.sum(1)

    def row_offsets(self, rows: torch.Tensor) -> torch.Tensor:
        """Buffer offset (int64) of each row id ``c * L + (kd * KH + kh) * KW + kw``
        (:attr:`column_shift` floats past the input the row reads for output position 0)."""
        g = self.geometry
        _, kh_, kw_ = g.kernel
        dd, dh, dw = g.dilation
        sd, sh, sw = g.stride
        dq, _, wq = self.phased
        c = rows // g.locations
        loc = rows % g.locations
        kd, kh, kw = loc // (kh_ * kw_), (loc // kw_) % kh_, loc % kw_
        zd, zh, zw = kd * dd, kh * dh, kw * dw
        ps = self.plane_stride
        if self.virtual_depth:  # plane d's row reads input plane d + zd - pd (stride 1)
            return (c * dq + zd - g.padding[0]) * ps + zh * wq + zw
        phase = (zd % sd) * sh * sw + (zh % sh) * sw + zw % sw
        return ((c * self.phases + phase) * dq + zd // sd) * ps + (zh // sh) * wq + zw // sw

    def prepare(self, x: torch.Tensor, slack: int, buf: torch.Tensor | None = None) -> torch.Tensor:
        """Padded, phase-split copy of ``x [N, C, D, H, W]`` as one flat buffer with ``slack`` extra
        zeros at the end (tiles past the last position read there).  ``buf``: a buffer returned by
        an earlier call for the same shape, reused (its zero borders are never written)."""
        g = self.geometry
        n = x.shape[0]
        pd, ph, pw = self.stored_padding
        sd, sh, sw = g.stride
        dq, hq, wq = self.phased
        dp, hp, wp = self.padded
        if buf is None:
            buf = x.new_zeros(n * self.batch_stride + slack)
        if self.phases == 1:
            view = buf.as_strided(
                (n, g.in_channels, dq, hq, wq),
                (self.batch_stride, dq * self.plane_stride, self.plane_stride, wq, 1),
            )
            view[:, :, pd : pd + self.size[0], ph : ph + self.size[1], pw : pw + self.size[2]] = x
            return buf
        xp = F.pad(x, (pw, wq * sw - wp + pw, ph, hq * sh - hp + ph, pd, dq * sd - dp + pd))
        xp = xp.view(n, g.in_channels, dq, sd, hq, sh, wq, sw).permute(0, 1, 3, 5, 7, 2, 4, 6)
        buf[: n * self.batch_stride].view(n, g.in_channels, sd, sh, sw, dq, hq, wq).copy_(xp)
        return buf
