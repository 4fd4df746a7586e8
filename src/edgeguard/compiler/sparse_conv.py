"""``SparseConv``: a pruned Conv2d/Conv3d that runs a generated kernel for its own sparsity pattern."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .calls import exporting, first_use, in_compiled_call
from .errors import CompileError
from .generated import (
    OUTPUT_SLACK,
    BufferPool,
    PoolSite,
    has_slack,
    has_wide_slack,
    kernel_output,
)
from .layout import InputLayout
from .plan import ConvGeometry, SparsePlan

MODES = ("cpu", "cuda", "torch")
PRECISIONS = ("ieee", "tf32", "bf16")  # CUDA matmul operands: float32, TF32, bfloat16
STANDARD_FORMS = ("auto", "gather", "conv")
GATHER_MAX_DENSITY = 0.2  # "auto": gather form up to this share of the dense MACs
# CPU: a 2-D layer runs batch-last (below) from this batch on, where its output plane has at most
# BATCH_LAST_MAX_PLANE positions (docs/compiler.md, design decisions)
BATCH_LAST_MIN_BATCH = 8
BATCH_LAST_MAX_PLANE = 64


class KernelView(NamedTuple):
    """What a CPU kernel computes for one layer input shape: ``plan`` on the kernel's geometry,
    its 5-D input ``shape``, the ``subsample`` stride taken first (pointwise strided convs),
    whether it is :func:`batch_last_geometry`, and ``strides``: where the kernel's own fill reads
    each of its input elements in the layer's input (a subsample or a transpose gathered by the
    kernel; None: the layer's input is the kernel's, contiguous)."""

    plan: SparsePlan
    shape: tuple[int, ...]
    subsample: tuple[int, int, int] | None
    batch_last: bool
    strides: tuple[int, int, int, int, int] | None
    pitch: tuple[int, int] | None = None  # an input read in place from a wide buffer (InputLayout)
    wide_gather: bool = False  # ``strides`` read a wide producer's view (taken as it is)
    # the input is a view into this kernel's own padded buffer, written there by its producer
    # (SparseConv.pad_reader): no fill, aligned planes (InputLayout.aligned_planes)
    prepadded: bool = False


def padded_for(x: torch.Tensor, conv: nn.Module) -> bool:
    """Whether ``x`` is a producer's output written into ``conv``'s own padded input buffer
    (:attr:`SparseConv.pad_reader`): its padding is in the storage around it, zero."""
    return getattr(x, "_eg_padded_for", None) is conv


def wide_strides(shape: tuple[int, ...], pitch: tuple[int, int]) -> tuple[int, ...]:
    """Strides of the ``[N, C, D, H, W]`` view of a wide output of ``pitch`` (row, plane)."""
    _, c, d, _, _ = shape
    wq, ps = pitch
    return (c * d * ps, d * ps, ps, wq, 1)


def input_pitch(x: torch.Tensor) -> tuple[int, int] | None:
    """``(row pitch, plane pitch)`` where ``x [N, C, D, H, W]`` is the view a wide kernel output
    returns (:attr:`SparseConv.wide_out`: rows ``Wq > W`` floats apart, planes ``OPS``); None
    for any other tensor.  By strides only (meta tensors too): a call's input is taken as wide
    only where :func:`wide_input` says so."""
    if x.dim() != 5 or x.is_contiguous():
        return None
    _, c, d, h, w = x.shape
    s = x.stride()
    if s[4] != 1 or s[3] <= w or s[2] < h * s[3] or s[1] != d * s[2] or s[0] != c * s[1]:
        return None
    return (s[3], s[2])


def wide_input(x: torch.Tensor) -> tuple[int, int] | None:
    """:func:`input_pitch` of a layer's input where its storage also holds a kernel output's zero
    slack after it (what the kernels may read past the last plane); None otherwise (a slice of a
    user's tensor with a wide view's strides is copied, not read in place)."""
    pitch = input_pitch(x)
    return pitch if pitch is not None and has_wide_slack(x, OUTPUT_SLACK) else None


def batch_last_geometry(g: ConvGeometry) -> ConvGeometry:
    """A 2-D conv (depth 1) over ``[N, C, H, W]`` as the 3-D conv over ``[1, C, H, W, N]`` that
    computes the same numbers: kernel ``(kh, kw, 1)``; its rows keep their ids
    (``c * L + kh * KW + kw``), so the plan's blocks and panels are unchanged."""
    return ConvGeometry(
        g.in_channels,
        g.out_channels,
        (*g.kernel[1:], 1),
        (*g.stride[1:], 1),
        (*g.padding[1:], 0),
        (*g.dilation[1:], 1),
    )


def dense_weight(plan: SparsePlan) -> torch.Tensor:
    """The weight ``[M, C, kd * kh * kw]`` a plan encodes, pruned entries zero (float32, CPU)."""
    g = plan.geometry
    dense = torch.zeros(g.out_channels, g.in_channels * g.locations)
    for rows, panel, slots in zip(
        plan.block_rows, plan.panels, plan.filters.view(-1, plan.mr), strict=True
    ):
        for j, f in enumerate(slots.tolist()):
            if f >= 0:
                dense[f, rows] = panel[:, j]
    return dense.view(g.out_channels, g.in_channels, g.locations)


class SparseConv(nn.Module):
    """Computes ``act(conv(x, W) + b)`` for a weight whose pruned entries are exact zeros.

    ``mode`` selects the implementation: ``"cpu"`` (generated C++, compiled per input size on first
    use), ``"cuda"`` (Triton) or ``"torch"`` (standard operators only: pad, slice, gather, matmul; the
    fallback without a compiler and the form exported to ONNX).  Input ``[N, C, D, H, W]`` (or
    ``[N, C, H, W]`` for a 2D layer), float32; inference only (no autograd through the kernels).
    """

    def __init__(
        self,
        plan: SparsePlan,
        *,
        relu: bool = False,
        slope: float = 0.0,
        cap: float = math.inf,
        two_d: bool = False,
        mode: str = "torch",
        nv: int | None = None,
        kc: int | None = None,
        name: str = "conv",
        ct: int | None = None,
        fg: int | None = None,
        pack: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise CompileError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.plan = plan
        self.relu = relu
        self.slope = float(slope)  # with relu: a leaky ReLU of this negative slope (0: ReLU)
        # with relu: the ReLU capped at this (ReLU6: 6), inf: none; not with a slope
        self.cap = float(cap)
        if self.cap <= 0 or (self.slope and self.cap < math.inf):
            raise CompileError(f"cap must be > 0 and only on a plain ReLU, got {cap!r}")
        self.two_d = two_d
        self.mode = mode
        self.nv = nv  # CPU vectors per tile; None: per input size (Target.nv_for)
        self.kc = kc
        for knob, val in (("ct", ct), ("fg", fg)):
            if val is not None and (not isinstance(val, int) or val < 1):
                raise CompileError(f"{knob} must be a positive int or None (default), got {val!r}")
        self.ct, self.fg = ct, fg  # CPU task shape (tiles per task, filter groups); None: default
        self.pack = pack  # CPU: pack each tile's rows (True) or read them in place (default)
        self.precision = "ieee"  # CUDA matmul precision (one of PRECISIONS)
        self.triton_config = None  # CUDA launch configuration (triton_backend.tune); None: default
        # A max pool fused after the activation: window (kd, kh, kw), stride = window, no padding,
        # floor mode; set by the compiler when the conv's only user is such a pool.
        self.pool: tuple[int, int, int] | None = None
        # A residual sum fused after the conv (set by the compiler's residual pass): forward takes
        # a second tensor of the output's shape, added before the ReLU: act(conv(x) + b + r).
        self.residual = False
        # The output may be written over the fused residual (set by the compiler where nothing
        # reads the residual after this layer: passes.inplace.residuals_into_outputs).
        self.residual_into = False
        # Store the output wide where the kernel allows (rows in the padded buffer's pitch, see
        # codegen.wide_plane) and return a view of it: set by the compiler where every user of
        # the output is a 3-D CPU sparse conv, as its input or its fused residual (wide_outputs).
        self.wide_out = False
        # A wide output written straight into this reader's padded input buffer (a 1-tuple of
        # the reader, a padded stride-1 3-D sparse conv; not a submodule): set by the compiler
        # (wide_outputs); used at an input size where the output's row pitch is the reader's.
        self.pad_reader: tuple[SparseConv, ...] = ()
        self.name = name
        g = plan.geometry
        self.register_buffer(
            "panel", torch.cat(plan.panels).contiguous() if plan.panels else torch.zeros(0, plan.mr)
        )
        self.register_buffer("bias", plan.bias.contiguous())
        # Per-location dense slices over the union of kept channels: the standard-operator form.
        dense = dense_weight(plan)
        self._locs: list[tuple[int, int, int]] = []
        wcat: list[torch.Tensor] = []
        for loc in range(g.locations):
            chans = torch.nonzero(dense[:, :, loc].any(0)).flatten()
            if len(chans) == 0:
                continue
            kh_, kw_ = g.kernel[1], g.kernel[2]
            self._locs.append((loc // (kh_ * kw_), (loc // kw_) % kh_, loc % kw_))
            self.register_buffer(f"chans_{len(self._locs) - 1}", chans)
            wcat.append(dense[:, chans, loc])
        # the kept weights of every location side by side: one matmul over the gathered slices
        self.register_buffer("wcat", torch.cat(wcat, 1) if wcat else torch.zeros(g.out_channels, 0))
        # the share of the dense MACs that the gather form multiplies (union over all filters)
        self.gather_density = self.wcat.shape[1] / max(1, g.in_channels * g.locations)
        self._conv_weights: dict[tuple, torch.Tensor] = {}  # conv_weight(), one device and dtype
        self.form = "auto"  # standard-operator form: "gather", "conv" or "auto" (see standard_form)
        self._kernels: dict[tuple, object] = {}
        self.reuse_buffers = False
        # the compiled model's shared buffers (outputs and padded inputs); None: this layer's own
        self.scratch: BufferPool | None = None
        # per 5-D input shape: what a CPU call needs (kernel, layout, kept buffers): _CpuCall
        self._cpu_calls: dict[tuple, _CpuCall] = {}
        self._plans: dict[tuple[bool, bool], SparsePlan] = {}  # on other geometries (_variant)

    # -- standard-operator path (fallback and ONNX) ------------------------------------------------
    def _pooled(self, out: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(out, self.pool, self.pool) if self.pool else out

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The 5-D output shape for a 5-D input of ``shape`` (after the fused pool if any)."""
        return (shape[0], self.plan.geometry.out_channels, *self.out_size(tuple(shape[2:])))

    def out_size(self, size: tuple[int, int, int]) -> tuple[int, int, int]:
        """Output ``(D, H, W)`` for an input of ``size``, after the fused pool if any."""
        out = self.plan.geometry.output_size(size)
        return tuple(n // k for n, k in zip(out, self.pool, strict=True)) if self.pool else out

    def standard_form(self) -> str:
        """How the standard-operator path (torch backend, ONNX export) computes this layer:
        ``"gather"`` (per kernel location: shifted slice, gather of the channels any filter keeps
        there, matmul; multiplies ``gather_density`` of the dense MACs) or ``"conv"`` (one dense
        conv with the pruned weights as zeros).  ``form="auto"`` takes the gather form only while
        it multiplies at most 20 % of the dense MACs: past that a runtime's dense conv is faster
        (docs/compiler.md, ONNX).  Either form gives the masked model's result."""
        if self.form not in STANDARD_FORMS:
            raise CompileError(f"form must be one of {STANDARD_FORMS}, got {self.form!r}")
        if self.form != "auto":
            return self.form
        return "gather" if self.gather_density <= GATHER_MAX_DENSITY else "conv"

    def conv_weight(self) -> torch.Tensor:
        """The dense weight ``[M, C, kd, kh, kw]`` with pruned entries zero (from the plan), built
        once per device and dtype: a constant (an ONNX initializer), not ops of every call."""
        key = (str(self.wcat.device), self.wcat.dtype)
        if key not in self._conv_weights:
            g = self.plan.geometry
            w = dense_weight(self.plan).view(g.out_channels, g.in_channels, *g.kernel)
            self._conv_weights = {key: w.to(self.wcat)}
        return self._conv_weights[key]

    def _conv_form(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        """The "conv" standard form on the layer's own rank (4-D for a 2-D layer: a 2-D conv
        between reshapes would cost runtimes their blocked-layout conv chains)."""
        g = self.plan.geometry
        w = self.conv_weight()
        if x.dim() == 4:
            out = F.conv2d(x, w.squeeze(2), self.bias, g.stride[1:], g.padding[1:], g.dilation[1:])
            out = self.activation(out) if act else out
            return F.max_pool2d(out, self.pool[1:], self.pool[1:]) if self.pool else out
        out = F.conv3d(x, w, self.bias, g.stride, g.padding, g.dilation)
        return self._pooled(self.activation(out) if act else out)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's fused activation: ReLU, leaky ReLU (``slope``), capped ReLU (``cap``) or
        none."""
        if not self.relu:
            return out
        if self.cap < math.inf:
            return F.hardtanh(out, 0.0, self.cap)
        return F.leaky_relu(out, self.slope) if self.slope else F.relu(out)

    def forward_torch(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        """The standard-operator path on a 5-D input; ``act``: apply the layer's ReLU."""
        g = self.plan.geometry
        if self.standard_form() == "conv":
            if self.two_d:
                return self._conv_form(x.squeeze(2), act).unsqueeze(2)
            return self._conv_form(x, act)
        n = x.shape[0]
        do, ho, wo = g.output_size(tuple(x.shape[2:]))
        pd, ph, pw = g.padding
        xp = F.pad(x, (pw, pw, ph, ph, pd, pd))
        sd, sh, sw = g.stride
        dd, dh, dw = g.dilation
        cols = []
        for i, (kd, kh, kw) in enumerate(self._locs):
            a, b, c = kd * dd, kh * dh, kw * dw
            xs = xp[
                :,
                :,
                a : a + (do - 1) * sd + 1 : sd,
                b : b + (ho - 1) * sh + 1 : sh,
                c : c + (wo - 1) * sw + 1 : sw,
            ]
            cols.append(
                xs.index_select(1, getattr(self, f"chans_{i}")).reshape(n, -1, do * ho * wo)
            )
        out = self.bias.view(1, -1, 1)
        if cols:  # the kept rows of every location stacked (an im2col of kept rows), one matmul
            out = torch.matmul(self.wcat, torch.cat(cols, 1)) + out
        else:
            out = out.expand(n, -1, do * ho * wo).contiguous()
        out = out.view(n, -1, do, ho, wo)
        return self._pooled(self.activation(out) if act else out)

    # -- generated kernels -------------------------------------------------------------------------
    def layout(self, x: torch.Tensor) -> InputLayout:
        return InputLayout(self.plan.geometry, tuple(x.shape[2:]))

    def _pointwise_stride(self) -> tuple[int, int, int] | None:
        """The stride of a 1 x 1 (x 1) unpadded strided conv: it reads only every ``s``-th input,
        so the kernel takes that subsample at stride 1 instead of a phase split of the whole input."""
        g = self.plan.geometry
        if g.kernel == (1, 1, 1) and not any(g.padding) and g.stride != (1, 1, 1):
            return g.stride
        return None

    def batch_last(self, shape: tuple[int, ...]) -> bool:
        """Whether the CPU kernel takes the 5-D input ``shape`` (depth 1) batch-last: as one
        sample ``[1, C, H, W, N]`` of :func:`batch_last_geometry`, so that a small output plane's
        positions times the batch fill whole vectors (a 4 x 4 plane computed alone fills half of
        a 32-position tile with real outputs).  The kernel gathers the transposed input itself and
        its output is transposed back; 1 x 1 convs, whose planes hold no padding columns, stay
        plain."""
        n, _, d, h, w = shape
        if not self.two_d or d != 1 or self.pool or n < BATCH_LAST_MIN_BATCH:
            return False
        if self.plan.geometry.kernel == (1, 1, 1):  # no padding columns to waste: plain is faster
            return False
        _, ho, wo = self.plan.geometry.output_size((1, h, w))
        return ho * wo <= BATCH_LAST_MAX_PLANE

    def _variant(self, sub: bool, bl: bool) -> SparsePlan:
        """The plan on the geometry a kernel computes, with the same rows: at stride 1 (``sub``:
        a pointwise strided conv on its subsample) and/or :func:`batch_last_geometry` (``bl``)."""
        if not (sub or bl):
            return self.plan
        if (sub, bl) not in self._plans:
            g = self.plan.geometry
            if sub:
                g = replace(g, stride=(1, 1, 1))
            if bl:
                g = batch_last_geometry(g)
            self._plans[sub, bl] = replace(self.plan, geometry=g)
        return self._plans[sub, bl]

    def reads_in_place(self) -> bool:
        """Whether the CPU kernel can read its input where it lies, a wide producer's view
        included: a 3-D conv at stride 1 with no height/width padding (1 x 1 x 1, temporal), rows
        not packed (whatever :attr:`mode` is now: build_kernels runs the model in "torch" mode
        to learn what each kernel will see)."""
        g = self.plan.geometry
        return (
            not self.two_d and not self.pack and g.stride == (1, 1, 1) and g.padding[1:] == (0, 0)
        )

    def takes_prepadded(self) -> bool:
        """Whether the CPU kernel can read an input its producer wrote into this layer's own
        padded buffer (:attr:`pad_reader`, :attr:`InputLayout.aligned_planes`): a 3-D conv at
        stride 1 with stored height/width padding and none along depth, rows not packed."""
        g = self.plan.geometry
        return (
            not self.two_d
            and not self.pack
            and bool(self.plan.block_rows)
            and g.stride == (1, 1, 1)
            and g.padding[0] == 0
            and g.padding[1:] != (0, 0)
        )

    def input_form(
        self, x: torch.Tensor, slack: bool = True
    ) -> tuple[tuple[int, int] | None, bool]:
        """How the CPU kernel takes ``x``: ``(pitch, prepadded)``, the wide producer's pitch it
        reads in place or through its strides (:func:`wide_input`; ``slack=False``: by strides
        only, :func:`input_pitch`, for meta tensors), and whether ``x`` lies in this layer's own
        padded buffer (:func:`padded_for`)."""
        if padded_for(x, self) and self.takes_prepadded():
            return None, True
        return (wide_input(x) if slack else input_pitch(x)), False

    def _kernel_view(
        self,
        shape: tuple[int, ...],
        pitch: tuple[int, int] | None = None,
        prepadded: bool = False,
    ) -> KernelView:
        """What the CPU kernel computes for a 5-D layer input of ``shape``; ``pitch``: the input is
        a wide producer's view (:func:`input_pitch`), read in place where this layer can;
        ``prepadded``: the input lies in this layer's padded buffer (:meth:`input_form`)."""
        if prepadded:
            return KernelView(self.plan, tuple(shape), None, False, None, prepadded=True)
        sub = self._pointwise_stride()
        n, c, d, h, w = shape
        sd, sh, sw = sub or (1, 1, 1)
        dv, hv, wv = (-(-v // s) for v, s in zip((d, h, w), (sd, sh, sw), strict=True))
        bl = self.batch_last(shape)
        plan = self._variant(sub is not None, bl)
        strides = None  # the kernel fills its buffer itself (the phases of a strided one too)
        if bl:  # element (0, c, h, w, n) of [1, C, H, W, N] is x[n, c, 0, h, w]
            strides = (0, d * h * w, sh * w, sw, c * d * h * w)
        elif sub:
            strides = (c * d * h * w, d * h * w, sd * h * w, sh * w, sw)
        gather = False
        if pitch is not None and bl:
            pitch = None  # the caller makes the input contiguous
        elif pitch is not None and (
            sub
            or not self.reads_in_place()
            or not (
                InputLayout.virtual_depth_fits(plan.geometry, (d, h, pitch[0]))
                or not any(plan.geometry.padding)
            )
        ):  # the kernel's fill reads the wide view through its strides
            wq, ps = pitch
            strides, pitch, gather = (c * d * ps, d * ps, sd * ps, sh * wq, sw), None, True
        view = (1, c, hv, wv, n) if bl else (n, c, dv, hv, wv)
        return KernelView(plan, view, sub, bl, strides, pitch, gather)

    def kernel_layout(self, view: KernelView, vector_floats: int | None = None) -> InputLayout:
        """The input buffer layout of the CPU kernel of ``view`` for ``vector_floats``-float
        vectors (default: this machine's): a conv padded along depth only reads its input in
        place (virtual depth padding) unless its rows are packed (packing copies every row, the
        padding ones too); narrow planes of position-vectorised tiles store no width padding
        (:meth:`InputLayout.masked_columns_fit`)."""
        g, size = view.plan.geometry, tuple(view.shape[2:])
        virtual = not self.pack and InputLayout.virtual_depth_fits(g, size)
        masked = False
        if not (
            virtual or view.pitch or view.prepadded or view.batch_last or self.pack or self.pool
        ):
            from .cpu.target import host_vector_floats
            from .cpu.tuning import filter_vectors

            vl = vector_floats or host_vector_floats()
            masked = InputLayout.masked_columns_fit(g, size, vl) and not filter_vectors(
                vl, view.plan.mr, g.output_size(size), False
            )
        return InputLayout(
            g,
            size,
            virtual_depth=virtual,
            pitch=view.pitch,
            aligned_planes=view.prepadded,
            masked_columns=masked,
        )

    def kernel_key(
        self,
        shape: tuple[int, ...],
        pitch: tuple[int, int] | None = None,
        prepadded: bool = False,
        rpitch: tuple[int, int] | None = None,
    ) -> tuple:
        """The key of the CPU kernel that serves 5-D inputs of ``shape`` (a wide producer's view
        of ``pitch``: :func:`input_pitch`; ``prepadded``: :meth:`input_form`; ``rpitch``: a
        wide residual's pitch, :meth:`residual_plane`)."""
        view = self._kernel_view(shape, pitch, prepadded)
        if view.batch_last:
            return ("cpu-batch-last", *shape)
        return (
            "cpu",
            *shape[1:],
            view.pitch,
            view.strides,
            prepadded,
            self.output_layout(view),
            self.residual_plane(view, rpitch),
        )

    def output_layout(self, view: KernelView, target=None) -> tuple[int, int]:
        """``(plane stride, head)`` of this layer's output for ``view``: ``(0, 0)`` a plain
        output; ``(OPS, 0)`` a wide one (:meth:`wide_plane`); ``head > 0``: a wide one written
        into :attr:`pad_reader`'s padded buffer, its planes that buffer's (aligned) planes and
        position 0 ``head`` floats into each, where the reader's rows have this output's row
        pitch (its padding columns are then the columns this layer computes past each row end,
        which the kernel stores as zeros, ``ZJ``) and its channels are this layer's filters."""
        ops = self.wide_plane(view, target)
        if not ops or not self.pad_reader:
            return ops, 0
        vl = target.vector_floats if target is not None else None
        reader, lay = self.pad_reader[0], self.kernel_layout(view, vl)
        if (
            not reader.takes_prepadded()
            or reader.plan.geometry.in_channels != lay.geometry.out_channels
        ):
            return ops, 0
        rl = InputLayout(reader.plan.geometry, lay.out, aligned_planes=True)
        written = -(-lay.positions // 16) * 16  # the whole vectors the kernel stores
        if rl.phased[2] != lay.phased[2] or rl.head + written > rl.plane_stride:
            return ops, 0
        return rl.plane_stride, rl.head

    def residual_plane(self, view: KernelView, rpitch: tuple[int, int] | None, target=None) -> int:
        """The plane stride at which the kernel of ``view`` reads a wide residual of ``rpitch``
        (its row pitch the wide output's, its planes further apart: one written into another
        layer's padded buffer) in place; 0: in the output's own layout (or copied into it)."""
        if not self.residual or rpitch is None:
            return 0
        ops, _ = self.output_layout(view, target)
        vl = target.vector_floats if target is not None else None
        if not ops or rpitch[0] != self.kernel_layout(view, vl).phased[2] or rpitch[1] == ops:
            return 0
        return rpitch[1] if rpitch[1] % 16 == 0 and rpitch[1] >= ops else 0

    def call_key(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple:
        """The key of this layer's kept CPU call for a 5-D input ``x`` (and ``residual``): the
        shape, :meth:`input_form` and a wide residual's pitch."""
        rp = wide_input(residual) if self.residual and isinstance(residual, torch.Tensor) else None
        return (*x.shape, *self.input_form(x), rp)

    def wide_plane(self, view: KernelView, target=None) -> int:
        """The plane stride of this layer's wide output for ``view`` (0: a plain output) where it
        is not written into a reader's buffer (:meth:`output_layout`)."""
        if not self.wide_out or self.pack or self.pool or view.batch_last:
            return 0
        from .cpu import host_target
        from .cpu.codegen import wide_plane
        from .cpu.tuning import filter_vectors

        target = target or host_target()
        vl = target.vector_floats
        lay = self.kernel_layout(view, vl)
        if filter_vectors(vl, view.plan.mr, lay.out, False):
            return 0
        return wide_plane(lay, self._vectors(lay, view.plan, vl, target) * vl, vl, False)

    def _vectors(
        self,
        lay: InputLayout,
        plan: SparsePlan,
        vector_floats: int,
        target=None,
        plain: bool = True,
    ) -> int:
        """Vectors per tile of the CPU kernel at ``lay``: ``nv``, or the choice of ``target``
        (default: this machine's, looked up only then); ``plain``: tiles that may be row-aligned
        (not batch-last, packed or pooled)."""
        from .cpu import Target, host_target
        from .cpu.codegen import row_aligned

        if self.nv is not None:
            return self.nv
        target = target or host_target()
        ra = (
            (lambda nv: row_aligned(lay, nv * vector_floats, vector_floats, False))
            if plain
            else None
        )
        out = lay.out[1] * lay.out[2]
        return Target(target.cxx, target.flags, vector_floats).nv_for(
            lay.positions, plan.mr, ra, out
        )

    def source(
        self,
        x: torch.Tensor,
        vector_floats: int,
        target=None,
        rpitch: tuple[int, int] | None = None,
    ) -> tuple[str, torch.Tensor]:
        """Generated C++ for 5-D inputs shaped like ``x`` and the kernel's weight-row order;
        ``target`` (default: this machine's) picks the tile when ``nv`` is None; ``rpitch``: a
        wide residual's pitch (:meth:`residual_plane`)."""
        from .cpu import generate_source

        view = self._kernel_view(tuple(x.shape), *self.input_form(x, slack=False))
        plan = view.plan
        lay = self.kernel_layout(view, vector_floats)
        plain = not (view.batch_last or self.pack or self.pool)
        nv = self._vectors(lay, plan, vector_floats, target, plain)
        ops, head = self.output_layout(view, target)
        return generate_source(
            plan,
            lay,
            nv,
            vector_floats,
            self.relu and not (self.residual and view.batch_last),  # there: after the transpose
            self.name,
            kc=self.kc,
            ct=self.ct,
            fg=self.fg,
            pack=self.pack,
            pool=self.pool or (1, 1, 1),
            source_strides=view.strides,
            residual=self.residual and not view.batch_last,
            slope=self.slope,
            cap=self.cap if self.relu else math.inf,
            wide=self.wide_out,
            wide_ops=ops if head else 0,
            res_plane=self.residual_plane(view, rpitch, target),
            batch_last=(
                (view.shape[-1], self.residual, self.relu and self.residual)
                if view.batch_last
                else (0, False, False)
            ),
        )

    def _cpu_kernel(self, x: torch.Tensor, rpitch: tuple[int, int] | None = None):
        key = self.kernel_key(tuple(x.shape), *self.input_form(x, slack=False), rpitch)
        if key not in self._kernels:
            from .cpu import build_many, host_target

            target = host_target()
            src, order = self.source(x, target.vector_floats, rpitch=rpitch)
            (lib,) = build_many([src], target)
            self.load_kernel(key, lib, order)
        return self._kernels[key]

    def load_kernel(self, key: tuple, lib, order: torch.Tensor) -> None:
        """Install an already built kernel under its :meth:`kernel_key`."""
        from .cpu import CppKernel

        self._kernels[tuple(key)] = CppKernel(lib, self.panel[order])

    def _fill_dead(
        self, out: torch.Tensor, residual: torch.Tensor | None = None, act: bool = True
    ) -> None:
        """Write the output of the filters with no kept weight: their bias (plus the residual),
        through the ReLU when ``act`` and the layer has one."""
        dead = self.plan.dead
        if dead.numel():  # not len(): Tensor.__len__ is Python, once per layer call
            val = self.bias[dead].view(1, -1, *[1] * (out.dim() - 2)).to(out.dtype)
            if residual is not None:
                val = val + residual[:, dead]
            out[:, dead] = self.activation(val) if act else val

    def forward_cpu(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on the generated CPU kernel; ``x`` is 5-D ``[N, C, D, H, W]``, ``residual``
        (a residual layer only) the output's shape."""
        if x.dtype != torch.float32:
            raise CompileError(f"{self.name}: the CPU kernel takes float32 input, got {x.dtype}")
        key = self.call_key(x, residual)
        call = self._cpu_calls.get(key)
        if call is None:
            call = _CpuCall(self, tuple(x.shape), *key[5:])
            if self.reuse_buffers:  # one kept call (and its buffers) per layer: the latest shape
                self._cpu_calls = {key: call}
        return call(x, residual)

    def forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        from .triton_backend import sparse_conv_triton

        out = sparse_conv_triton(self, x)
        if self.relu and self.slope:  # the Triton kernel applies ReLU only
            self._fill_dead(out, act=False)
            return self._pooled(self.activation(out))
        self._fill_dead(out)
        if self.relu and self.cap < math.inf:  # the cap too
            out = out.clamp_(max=self.cap)
        return self._pooled(out)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``act(conv(x) + b)``, or with ``residual`` (a layer the compiler fused a residual sum
        into) ``act(conv(x) + b + residual)``; ``residual`` broadcasts to the output."""
        if residual is not None and not self.residual:
            raise CompileError(f"{self.name}: this layer takes no residual")
        if residual is not None and not isinstance(residual, torch.Tensor):
            residual = torch.as_tensor(residual, dtype=x.dtype)
        if self.mode == "cpu" and self._cpu_calls and not exporting():
            # a shape this layer already ran (checked then): straight to its kept call
            call = self._cpu_calls.get(
                self.call_key(x, residual)
                if not self.two_d
                else (*_five(x.shape), None, False, None)
            )
            if (
                call is not None
                and x.dtype == torch.float32
                and not torch.is_grad_enabled()
                and not torch._C._autograd._profiler_enabled()  # profiled: the labelled path
                and (residual is None or call.takes(residual))
            ):
                # a 2-D layer's 4-D tensors go to the kernel as they are (depth 1: same memory)
                return call(x, residual, four=self.two_d)
        given, x0 = tuple(x.shape), x
        if self.two_d:
            x = x.unsqueeze(2)
        if x.dim() != 5 or x.shape[1] != self.plan.geometry.in_channels:
            dims = "H, W" if self.two_d else "D, H, W"
            raise CompileError(
                f"{self.name}: expected input [N, {self.plan.geometry.in_channels}, {dims}], "
                f"got {given}"
            )
        if min(self.plan.geometry.output_size(tuple(x.shape[2:]))) < 1:  # before any fused pool
            g = self.plan.geometry
            k, p = (g.kernel[1:], g.padding[1:]) if self.two_d else (g.kernel, g.padding)
            raise CompileError(
                f"{self.name}: input {given} is too small for kernel {tuple(k)} with padding "
                f"{tuple(p)}, stride and dilation of this layer (no output position)"
            )
        in_export = exporting()  # the standard-operator form is what ONNX holds
        if self.mode == "cpu" and not in_export:
            from .backends import get_backend

            r5 = residual.unsqueeze(2) if residual is not None and self.two_d else residual
            if r5 is None or _CpuCall.fits(r5, tuple(x.shape), self):
                out = get_backend(self.mode).run(self, x, r5)
                return out.squeeze(2) if self.two_d else out
        if residual is not None or self.residual:  # the sum and the ReLU after the conv
            act = self.relu
            if (in_export or self.mode == "torch") and self.standard_form() == "conv":
                out = self._conv_form(x0, act=False)
            else:
                out = self.forward_torch(x, act=False)
                out = out.squeeze(2) if self.two_d else out
            if residual is not None:
                try:
                    torch.broadcast_shapes(tuple(out.shape), tuple(residual.shape))
                except RuntimeError:
                    raise CompileError(
                        f"{self.name}: the residual {tuple(residual.shape)} does not broadcast "
                        f"to the output {tuple(out.shape)}"
                    ) from None
                out = out + residual
            return self.activation(out) if act else out
        if (in_export or self.mode == "torch") and self.standard_form() == "conv":
            return self._conv_form(x0)  # on the given rank: no reshapes around a 2-D conv
        if in_export:
            out = self.forward_torch(x)
        else:
            from .backends import get_backend

            out = get_backend(self.mode).run(self, x)
        return out.squeeze(2) if self.two_d else out

    def extra_repr(self) -> str:
        g = self.plan.geometry
        return (
            f"{g.in_channels}, {g.out_channels}, kernel={g.kernel}, stride={g.stride}, "
            f"mode={self.mode}, density={self.plan.density:.3f}, relu={self.relu}"
            + (f", slope={self.slope}" if self.slope else "")
            + (f", cap={self.cap:g}" if self.cap < math.inf else "")
            + (f", max_pool={self.pool}" if self.pool else "")
        )


# what a kernel filling each sample into its own per-thread buffer gets for the batch buffer it
# does not touch
_NO_BUFFER = torch.zeros(16)


def _five(shape: torch.Size) -> tuple[int, ...]:
    """A 2-D layer's input shape as the 5-D shape its kernels see (depth 1)."""
    return (shape[0], shape[1], 1, *shape[2:])


class _CpuCall:
    """One CPU call of a :class:`SparseConv` for one 5-D input shape, worked out once: the kernel,
    what is copied into which buffer, the output shape; with ``reuse_buffers`` the layer keeps it
    (and its buffers) for the next call of that shape, so a call does only the copies and the
    kernel (the Python around a small layer's kernel otherwise costs as much as the kernel)."""

    def __init__(
        self,
        conv: SparseConv,
        shape: tuple[int, ...],
        pitch: tuple[int, int] | None = None,
        prepadded: bool = False,
        rpitch: tuple[int, int] | None = None,
    ) -> None:
        self.conv = conv
        self.out_shape = conv.out_shape(shape)
        # a 2-D layer's output as it returns it (its 4-D calls: :meth:`__call__` ``four``)
        self.out4 = self.out_shape[:2] + self.out_shape[3:]
        view = conv._kernel_view(shape, pitch, prepadded)
        self.view = view
        meta = torch.empty(shape, device="meta")
        if pitch is not None:  # the wide producer's view, as the kernel reads it
            meta = torch.empty_strided(shape, wide_strides(shape, pitch), device="meta")
        if prepadded:
            meta._eg_padded_for = conv
        self.kernel = conv._cpu_kernel(meta, rpitch) if conv.plan.block_rows else None
        # a wide output: its plane stride (the view returned has rows Wq apart), else 0; head:
        # written into the reader's padded buffer, position 0 that many floats into its planes
        self.ops, self.head = conv.output_layout(view) if self.kernel is not None else (0, 0)
        lay = conv.kernel_layout(view)
        self.wide = (lay.phased[2], self.ops)  # a wide output's (row, plane) pitch
        self.positions = lay.positions
        # a wide residual the kernel reads in place with its own plane stride
        rp = conv.residual_plane(view, rpitch) if self.kernel is not None else 0
        self.res_pitch = (self.wide[0], rp) if rp else self.wide
        self.slack = (conv.nv or 4) * 16  # >= one tile of any target (nv * vector floats)
        self.unpadded = lay.phases == 1 and not any(lay.stored_padding)
        self.layout = lay
        self.inbuf: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.res: torch.Tensor | None = None  # batch-last: the kernel's output [1, M, Ho, Wo, N]
        self.zeros: torch.Tensor | None = None  # a residual layer called without its residual
        # the pool buffers this call took last: its output's, its padded input's
        self.out_site, self.buf_site = PoolSite(), PoolSite()

    @staticmethod
    def fits(residual: torch.Tensor, x_shape: tuple[int, ...], conv: SparseConv) -> bool:
        """Whether the kernel can add ``residual`` (5-D) itself for a 5-D input of ``x_shape``:
        float32 and broadcasting to the output's shape (else the layer adds it with PyTorch)."""
        out = conv.out_shape(x_shape)
        if residual.dtype != torch.float32 or residual.dim() != 5:
            return False
        try:
            return torch.broadcast_shapes(tuple(residual.shape), out) == out
        except RuntimeError:
            return False

    def takes(self, residual: torch.Tensor) -> bool:
        """Whether this call's kernel can add ``residual`` (given on the layer's own rank)."""
        shape = self.out4 if self.conv.two_d else self.out_shape
        return residual.dtype == torch.float32 and tuple(residual.shape) == shape

    def __call__(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, four: bool = False
    ) -> torch.Tensor:
        """The layer on ``x`` (5-D; ``four``: a 2-D layer's 4-D input, residual and output, the
        same memory as their depth-1 5-D forms)."""
        conv = self.conv
        # the residual may take the output: only inside the compiled model's forward, where it
        # is the model's own buffer (a layer called alone may be given the caller's tensor)
        into = conv.residual_into and residual is not None and in_compiled_call()
        if conv.residual:
            residual = self._residual(residual, four)
        # Buffers are kept between calls when ``reuse_buffers``: fresh multi-MB allocations are
        # mmap'ed and page-faulted on every call, which cost as much as a small layer's compute.
        alloc = self.out4 if four else self.out_shape
        if self.ops:  # wide: [N, M, DO, OPS] stored, returned as the [N, M, DO, HO, WO] view
            alloc = (*self.out_shape[:3], self.ops)
        if self.head:  # in the reader's buffer: its leading padding, room to align position 0
            alloc = (math.prod(alloc) + self.head + 16,)
        if (  # written over the residual, which nothing reads after this layer
            into
            and not self.ops
            and residual.is_contiguous()
            and tuple(residual.shape) == tuple(alloc)
        ):
            out = residual
        elif conv.scratch is not None:  # a free buffer of the compiled model's pool
            out = conv.scratch.output(alloc, self.out_site)
        else:
            out = self.out if first_use(conv) else None  # called again: the kept one is in use
            if out is not None and out.dim() != len(alloc):  # kept for the other rank
                out = out.view(alloc)
        if out is None:
            out = kernel_output(alloc)
            if conv.reuse_buffers and self.out is None:
                self.out = out
        flat = out
        if self.ops:
            out = self._wide_view(flat)
            if self.head:
                out._eg_padded_for = conv.pad_reader[0]
            if residual is not None and wide_input(residual) != self.res_pitch:
                wide = conv.scratch.output(alloc) if conv.scratch is not None else None
                wide = wide if wide is not None else kernel_output(alloc)
                residual = self._wide_view(wide).copy_(residual)
        result = self._compute(x, out, residual)
        if self.head:
            self._zero_padding(flat, out.storage_offset() - flat.storage_offset() - self.head)
        return result

    def _wide_view(self, flat: torch.Tensor) -> torch.Tensor:
        """The ``[N, M, DO, HO, WO]`` view of a wide output (or of a residual in its layout) in
        the buffer ``flat``; in a reader's padded buffer, position 0 of every plane on a 64-byte
        line, so that whole-vector stores and loads are aligned."""
        start = (-(flat.data_ptr() // 4 + self.head)) % 16 if self.head else 0
        return flat.as_strided(
            self.out_shape,
            wide_strides(self.out_shape, self.wide),
            flat.storage_offset() + start + self.head,
        )

    def _zero_padding(self, flat: torch.Tensor, start: int) -> None:
        """Zero what the reader's padded buffer holds around this output (``flat[start:]``, its
        planes) and the kernel does not write: the leading padding rows and columns, and every
        position from the last output on (to the end of ``flat``, which :data:`OUTPUT_SLACK`
        zeros follow); a pool buffer held anything before.  The columns past each row end, the
        reader's padding columns too, the kernel stores as zeros itself (``ZJ``), dead filters'
        included (codegen.with_dead_blocks)."""
        n, m, do, _, _ = self.out_shape
        ps = self.ops
        planes = flat[start : start + n * m * do * ps].view(n * m * do, ps)
        flat[start + n * m * do * ps :].zero_()  # the reader's last rows read on into it
        planes[:, : self.head].zero_()
        planes[:, self.head + self.positions :].zero_()

    def _compute(
        self, x: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """The kernel into ``out`` (filling its input buffer first where it must)."""
        conv, view = self.conv, self.view
        if self.kernel is None:  # every filter pruned: the output is the bias
            conv._fill_dead(out, residual)
            return out
        if view.prepadded:  # the producer wrote x into this layer's padded buffer: no fill
            if not padded_for(x, conv):
                raise CompileError(f"{conv.name}: internal: input is not in the padded buffer")
            n, lay = x.shape[0], self.layout
            buf = x.as_strided(
                (n * lay.batch_stride + self.slack,), (1,), x.storage_offset() - lay.head
            )
            return self._run(buf, None, out, residual)
        if self.view.pitch is not None:  # a wide producer's view: read where it lies
            if wide_input(x) != self.view.pitch:
                raise CompileError(f"{conv.name}: internal: input is not the wide view expected")
            return self._run(x, None, out, residual)
        if not x.is_contiguous() and not view.wide_gather:
            x = x.contiguous()
        if view.strides is None and self.unpadded and has_slack(x, self.slack):
            return self._run(x.view(-1), None, out, residual)  # a kernel output is its own buffer
        # the kernel fills the buffer's interior (its phases; a gather, ``view.strides``) from x
        # the kernel writes every float of the buffer (borders too): any free one will do
        need = self.kernel.buffer_floats(view.shape[0])
        if need == 0:  # its own per-thread buffers: no x
            return self._run(_NO_BUFFER, x, out, residual)
        if conv.scratch is not None:  # the compiled model's pool: one still in cache
            return self._run(conv.scratch.output((need,), self.buf_site), x, out, residual)
        buf = self.inbuf
        if buf is None or buf.numel() < need + self.slack:  # (row fills: per thread count)
            buf = x.new_zeros(need + self.slack)
            self.inbuf = buf if conv.reuse_buffers else None
        return self._run(buf, x, out, residual)

    def _residual(self, residual: torch.Tensor | None, four: bool = False) -> torch.Tensor:
        """The residual as the kernel reads it: contiguous, the output's shape (zeros if none;
        ``four``: a 2-D layer's 4-D shape)."""
        if residual is None:
            if self.zeros is None:
                self.zeros = torch.zeros(self.out_shape, dtype=torch.float32)
            return self.zeros.view(self.out4) if four else self.zeros
        residual = residual.expand(self.out4 if four else self.out_shape)
        if self.ops and input_pitch(residual) is not None:  # a wide output reads it as it is
            return residual
        return residual if residual.is_contiguous() else residual.contiguous()

    def _run(
        self,
        buf: torch.Tensor,
        xin: torch.Tensor | None,
        out: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> torch.Tensor:
        """The kernel on the filled buffer ``buf`` (or filling it from ``xin`` itself), adding
        ``residual`` (a residual layer)."""
        conv, n = self.conv, out.shape[0]
        if self.view.batch_last:
            res = (
                self.res
                if self.res is not None
                else kernel_output((1, self.out_shape[1], *self.out_shape[3:], n))
            )
            self.res = res if conv.reuse_buffers else None
            self.kernel(buf, conv.bias, res, 1, xin, None, out, residual)
            return out
        # (the kernel writes the dead filters' outputs too: codegen.with_dead_blocks)
        self.kernel(buf, conv.bias, out, n, xin, residual)
        return out
