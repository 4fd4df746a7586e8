"""CUDA backend: a Triton kernel for the same blocked row-sparse plans as the CPU backend.

One program computes ``mr`` filters (padded to 16 for the tensor-core dot) x ``BP`` flat output
positions of one output depth plane: it walks its block's kept rows ``BK`` at a time, gathers the
input rows (one unit-stride run per row, thanks to the polyphase layout) and multiplies them with the
block's compact weight panel.  ``precision="ieee"`` keeps full float32 (the default, it matches the
masked model to 1e-4); ``"tf32"`` uses TF32 tensor cores like cuDNN's default, ``"bf16"`` rounds both
operands to bfloat16 (float32 accumulation, as autocast does).  :func:`tune` picks each layer's
launch configuration.  Runs on the CPU under ``TRITON_INTERPRET=1`` (how CI tests it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .errors import CompileError
from .sparse_conv import PRECISIONS, SparseConv


# Sizes and strides are plain runtime integers: one compiled kernel per configuration serves every
# layer and input size (Triton would otherwise compile again per divisibility of each).
@triton.jit(do_not_specialize=["XN", "XD", "P", "WQ", "WO", "DO", "M", "OPLANE"])
def _sparse_conv_kernel(
    x_ptr,
    w_ptr,
    roff_ptr,
    kb_ptr,
    taps_ptr,
    fil_ptr,
    bias_ptr,
    out_ptr,
    XN,
    XD,
    P,
    WQ,
    WO,
    DO,
    M,
    OPLANE,
    KD: tl.constexpr,
    MR: tl.constexpr,
    MRP: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    RELU: tl.constexpr,
    PREC: tl.constexpr,
    BLOCKS_FIRST: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    if BLOCKS_FIRST:  # neighbouring programs share one input tile (L2 reuse across blocks)
        b = tl.program_id(0)
        pid_p = tl.program_id(1)
    else:  # neighbouring programs share one weight panel
        pid_p = tl.program_id(0)
        b = tl.program_id(1)
    nd = tl.program_id(2)
    n = nd // DO
    d = nd % DO
    p = pid_p * BP + tl.arange(0, BP)
    pmask = p < P
    # A block's rows are ordered by kernel depth: kb[b * (KD + 1) + j] is where those with kd >= j
    # start.  Plane d walks only the kd in [taps[2d], taps[2d + 1]) that read real input.
    k0 = tl.load(kb_ptr + b * (KD + 1) + tl.load(taps_ptr + 2 * d))
    k1 = tl.load(kb_ptr + b * (KD + 1) + tl.load(taps_ptr + 2 * d + 1))
    xb = x_ptr + n.to(tl.int64) * XN + d.to(tl.int64) * XD
    mrow = tl.arange(0, MRP)
    acc = tl.zeros((MRP, BP), dtype=tl.float32)
    for k in range(k0, k1, BK):
        ks = k + tl.arange(0, BK)
        kmask = ks < k1
        roff = tl.load(roff_ptr + ks, mask=kmask, other=0)
        xt = tl.load(
            xb + roff[:, None] + p[None, :], mask=kmask[:, None] & pmask[None, :], other=0.0
        )
        wt = tl.load(
            w_ptr + ks[None, :] * MR + mrow[:, None],
            mask=kmask[None, :] & (mrow[:, None] < MR),
            other=0.0,
        )
        if PREC == "bf16" and INTERPRETED:  # the interpreter's bfloat16 dot returns garbage
            acc += tl.dot(wt.to(tl.bfloat16).to(tl.float32), xt.to(tl.bfloat16).to(tl.float32))
        elif PREC == "bf16":
            acc += tl.dot(wt.to(tl.bfloat16), xt.to(tl.bfloat16), out_dtype=tl.float32)
        else:
            acc += tl.dot(wt, xt, input_precision=PREC)
    f = tl.load(fil_ptr + b * MR + mrow, mask=mrow < MR, other=-1)
    bias = tl.load(bias_ptr + f, mask=f >= 0, other=0.0)
    acc += bias[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    h = p // WQ
    w = p % WQ
    valid = pmask & (w < WO)
    obase = ((n * M + f).to(tl.int64) * DO + d) * OPLANE
    optr = out_ptr + obase[:, None] + (h * WO + w)[None, :]
    tl.store(optr, acc, mask=(f[:, None] >= 0) & valid[None, :])


def _tables(conv, x: torch.Tensor):
    """Per (input shape, device) tables: row offsets, block starts, filter slots, weights."""
    key = ("cuda", tuple(x.shape[1:]), str(x.device))
    if key not in conv._kernels:
        plan = conv.plan
        lay = conv.layout(x)
        kd_rows = plan.geometry.locations // plan.geometry.kernel[0]  # rows per kd per channel
        kdim = plan.geometry.kernel[0]
        kb, order, start = [], [], 0
        for rows in plan.block_rows:  # each block's rows by kernel depth (stable: then by row id)
            kd = (rows % plan.geometry.locations) // kd_rows
            perm = torch.sort(kd, stable=True).indices
            order.append(start + perm)
            kb += (start + torch.searchsorted(kd[perm], torch.arange(kdim + 1))).tolist()
            start += len(rows)
        order = torch.cat(order) if order else torch.zeros(0, dtype=torch.int64)
        roff = torch.cat([lay.row_offsets(r) for r in plan.block_rows])[order]
        conv._kernels[key] = {
            "roff": roff.to(x.device),
            "kb": torch.tensor(kb, dtype=torch.int32, device=x.device),
            "taps": torch.tensor(lay.depth_taps(), dtype=torch.int32, device=x.device).flatten(),
            "fil": plan.filters.to(torch.int32).to(x.device),
            "panel": conv.panel[order].to(x.device).contiguous(),
            "bias": conv.bias.to(x.device).float().contiguous(),
            "layout": lay,
        }
    return conv._kernels[key]


@dataclass(frozen=True)
class LaunchConfig:
    """How one Triton sparse conv is launched: ``bp`` output positions and ``bk`` kept rows per
    step (powers of two >= 16), ``warps`` and pipeline ``stages`` per program, and the grid order
    (``blocks_first``: programs next to each other compute other filters of the same positions)."""

    bp: int = 64
    bk: int = 32
    warps: int = 4
    stages: int = 3
    blocks_first: bool = False

    def __post_init__(self) -> None:
        for knob in ("bp", "bk", "warps"):
            v = getattr(self, knob)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise CompileError(f"LaunchConfig.{knob} must be a power of two, got {v!r}")
        if self.bp < 16 or self.bk < 16:
            raise CompileError(f"LaunchConfig bp and bk must be >= 16, got {self.bp}, {self.bk}")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise CompileError(f"LaunchConfig.stages must be a positive int, got {self.stages!r}")


# The configurations :func:`tune` tries by default: the former fixed launch first, then larger
# position tiles, deeper pipelines and the other grid order.
DEFAULT_CONFIGS = tuple(
    LaunchConfig(bp, bk, w, st, bf)
    for bf in (False, True)
    for bp, bk, w in ((64, 32, 4), (128, 32, 4), (128, 32, 8), (64, 16, 4))
    for st in (2, 3, 4)
)


def sparse_conv_triton(
    conv, x: torch.Tensor, precision: str | None = None, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Run ``conv`` (a :class:`~edgeguard.compiler.SparseConv`) on ``x [N, C, D, H, W]`` float32.

    ``precision`` (default: the layer's ``precision``) is ``"ieee"`` (float32 products), ``"tf32"``
    or ``"bf16"`` (operands rounded to TF32 / bfloat16, float32 accumulation); ``config`` defaults
    to the layer's tuned ``triton_config`` (:func:`tune`), else :class:`LaunchConfig`'s defaults.
    """
    if x.dtype != torch.float32:
        raise CompileError(f"{conv.name}: the Triton kernel takes float32 input, got {x.dtype}")
    precision = precision or getattr(conv, "precision", "ieee")
    if precision not in PRECISIONS:
        raise CompileError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cfg = config or getattr(conv, "triton_config", None) or LaunchConfig()
    n = x.shape[0]
    g = conv.plan.geometry
    t = _tables(conv, x)
    lay = t["layout"]
    do, ho, wo = lay.out
    out = torch.empty(n, g.out_channels, do, ho, wo, device=x.device, dtype=torch.float32)
    nb = len(conv.plan.block_rows)
    if nb == 0:
        return out
    buf = lay.prepare(x.contiguous(), slack=cfg.bp)
    _hq, wq = lay.phased[1], lay.phased[2]
    tiles = triton.cdiv(lay.positions, cfg.bp)
    grid = (nb, tiles, n * do) if cfg.blocks_first else (tiles, nb, n * do)
    _sparse_conv_kernel[grid](
        buf,
        t["panel"],
        t["roff"],
        t["kb"],
        t["taps"],
        t["fil"],
        t["bias"],
        out,
        lay.batch_stride,
        lay.phased[1] * wq,
        lay.positions,
        wq,
        wo,
        do,
        g.out_channels,
        ho * wo,
        KD=g.kernel[0],
        MR=conv.plan.mr,
        MRP=max(16, triton.next_power_of_2(conv.plan.mr)),
        BK=cfg.bk,
        BP=cfg.bp,
        RELU=conv.relu and not conv.slope,  # a leaky ReLU: after, in PyTorch
        PREC=precision,
        BLOCKS_FIRST=cfg.blocks_first,
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    return out


def tune(
    conv, x: torch.Tensor, configs=DEFAULT_CONFIGS, repeats: int = 20, warmup: int = 3
) -> tuple[LaunchConfig, dict[LaunchConfig, float]]:
    """Time ``conv`` on ``x`` under each launch configuration (median wall time of ``repeats`` calls
    after ``warmup`` untimed ones, the GPU synchronised around each call), keep the fastest as the
    layer's ``triton_config`` and return it with every time (ms).  Outputs do not depend on the
    choice."""
    from .bench import median_ms

    if not configs:
        raise CompileError("tune needs at least one LaunchConfig")
    times = {}
    with torch.no_grad():
        for cfg in configs:
            times[cfg] = median_ms(
                lambda c=cfg: sparse_conv_triton(conv, x, config=c), repeats, warmup
            )
    best = min(times, key=times.get)
    conv.triton_config = best
    return best, times


def tune_model(
    compiled, example: torch.Tensor, configs=DEFAULT_CONFIGS, repeats: int = 20, warmup: int = 3
) -> dict:
    """:func:`tune` every sparse conv of a compiled CUDA model (:class:`CompiledModel`) on the
    inputs it sees for ``example`` (its batch and size: tune for the shape you will run).
    Returns, per layer name, the chosen configuration and its time against the default launch's
    (ms)."""
    from .bench import layer_inputs

    seen = layer_inputs(compiled.module, example, (SparseConv,))
    convs = compiled.sparse_layers()
    report = {}
    for name, x in seen.items():
        conv = convs[name]
        if conv.two_d:
            x = x.unsqueeze(2)
        best, times = tune(conv, x.contiguous(), configs, repeats, warmup)
        report[name] = {"config": best, "ms": times[best], "default_ms": times.get(LaunchConfig())}
    return report
