"""``SparseConv``: a pruned Conv2d/Conv3d that runs a generated kernel for its own sparsity pattern."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .calls import first_use
from .errors import CompileError
from .generated import has_slack, kernel_output
from .layout import InputLayout
from .plan import SparsePlan

MODES = ("cpu", "cuda", "torch")
PRECISIONS = ("ieee", "tf32", "bf16")  # CUDA matmul operands: float32, TF32, bfloat16
STANDARD_FORMS = ("auto", "gather", "conv")
GATHER_MAX_DENSITY = 0.2  # "auto": gather form up to this share of the dense MACs


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
        self._buffers_cpu: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- standard-operator path (fallback and ONNX) ------------------------------------------------
    def _pooled(self, out: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(out, self.pool, self.pool) if self.pool else out

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

    def _conv_form(self, x: torch.Tensor) -> torch.Tensor:
        """The "conv" standard form on the layer's own rank (4-D for a 2-D layer: a 2-D conv
        between reshapes would cost runtimes their blocked-layout conv chains)."""
        g = self.plan.geometry
        w = self.conv_weight()
        if x.dim() == 4:
            out = F.conv2d(x, w.squeeze(2), self.bias, g.stride[1:], g.padding[1:], g.dilation[1:])
            out = F.relu(out) if self.relu else out
            return F.max_pool2d(out, self.pool[1:], self.pool[1:]) if self.pool else out
        out = F.conv3d(x, w, self.bias, g.stride, g.padding, g.dilation)
        return self._pooled(F.relu(out) if self.relu else out)

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        g = self.plan.geometry
        if self.standard_form() == "conv":
            return self._conv_form(x.squeeze(2)).unsqueeze(2) if self.two_d else self._conv_form(x)
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
        return self._pooled(F.relu(out) if self.relu else out)

    # -- generated kernels -------------------------------------------------------------------------
    def layout(self, x: torch.Tensor) -> InputLayout:
        return InputLayout(self.plan.geometry, tuple(x.shape[2:]))

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, torch.Tensor]:
        """Generated C++ for inputs shaped like ``x`` and the kernel's weight-row order;
        ``target`` (default: this machine's) picks the tile when ``nv`` is None."""
        from .cpu import Target, generate_source, host_target

        lay = self.layout(x)
        nv = self.nv
        if nv is None:
            target = target or host_target()
            nv = Target(target.cxx, target.flags, vector_floats).nv_for(lay.positions, self.plan.mr)
        return generate_source(
            self.plan,
            lay,
            nv,
            vector_floats,
            self.relu,
            self.name,
            kc=self.kc,
            ct=self.ct,
            fg=self.fg,
            pack=self.pack,
            pool=self.pool or (1, 1, 1),
        )

    def _cpu_kernel(self, x: torch.Tensor):
        key = ("cpu", tuple(x.shape[1:]))
        if key not in self._kernels:
            from .cpu import build_many, host_target

            target = host_target()
            src, order = self.source(x, target.vector_floats)
            (lib,) = build_many([src], target)
            self.load_kernel(tuple(x.shape[1:]), lib, order)
        return self._kernels[key]

    def load_kernel(self, shape: tuple[int, ...], lib, order: torch.Tensor) -> None:
        """Install an already built kernel for inputs of ``shape`` ``[C, D, H, W]``."""
        from .cpu import CppKernel

        self._kernels[("cpu", tuple(shape))] = CppKernel(lib, self.panel[order])

    def _fill_dead(self, out: torch.Tensor) -> None:
        dead = self.plan.dead
        if len(dead):
            val = self.bias[dead]
            val = val.clamp_min(0) if self.relu else val
            out[:, dead] = val.view(1, -1, 1, 1, 1).to(out.dtype)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise CompileError(f"{self.name}: the CPU kernel takes float32 input, got {x.dtype}")
        lay = self.layout(x)
        n = x.shape[0]
        if not self.plan.block_rows:  # every filter pruned: the output is the bias
            out = kernel_output((n, self.plan.geometry.out_channels, *self.out_size(lay.size)))
            self._fill_dead(out)
            return out
        kernel = self._cpu_kernel(x)
        slack = (self.nv or 4) * 16  # >= one tile of any target (nv * vector floats)
        # Buffers are kept between calls when ``reuse_buffers``: fresh multi-MB allocations are
        # mmap'ed and page-faulted on every call, which cost as much as a small layer's compute.
        key = tuple(x.shape)
        inbuf, out = self._buffers_cpu.get(key, (None, None))
        if not first_use(self):  # called again in this forward: the kept output is still in use
            out = None
        x = x.contiguous()
        if lay.phases == 1 and not any(lay.geometry.padding) and has_slack(x, slack):
            buf, xin = x.view(-1), None  # unpadded: a kernel output is its own input buffer
        elif lay.phases == 1:  # the kernel fills the buffer's interior itself (zero borders kept)
            if inbuf is None:
                inbuf = x.new_zeros(n * lay.batch_stride + slack)
            buf, xin = inbuf, x
        else:
            inbuf = buf = lay.prepare(x, slack=slack, buf=inbuf)
            xin = None
        if out is None:
            out = kernel_output((n, self.plan.geometry.out_channels, *self.out_size(lay.size)))
        if self.reuse_buffers and key not in self._buffers_cpu:
            self._buffers_cpu = {key: (inbuf, out)}
        kernel(buf, self.bias, out, n, xin)
        self._fill_dead(out)
        return out

    def forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        from .triton_backend import sparse_conv_triton

        out = sparse_conv_triton(self, x)
        self._fill_dead(out)
        return self._pooled(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        exporting = torch.onnx.is_in_onnx_export()  # the standard-operator form is what ONNX holds
        if (exporting or self.mode == "torch") and self.standard_form() == "conv":
            return self._conv_form(x0)  # on the given rank: no reshapes around a 2-D conv
        if exporting:
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
            + (f", max_pool={self.pool}" if self.pool else "")
        )
