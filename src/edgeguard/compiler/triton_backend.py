"""CUDA backend: a Triton kernel for the same blocked row-sparse plans as the CPU backend.

One program computes ``mr`` filters (padded to 16 for the tensor-core dot) x ``BP`` flat output
positions of one output depth plane: it walks its block's kept rows ``BK`` at a time, gathers the
input rows (one unit-stride run per row, thanks to the polyphase layout) and multiplies them with the
block's compact weight panel.  ``precision="ieee"`` keeps full float32 (the default, it matches the
masked model to 1e-4); ``"tf32"`` uses TF32 tensor cores like cuDNN's default.  Runs on the CPU under
``TRITON_INTERPRET=1`` (how CI tests it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .errors import CompileError


@triton.jit
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
):
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


def sparse_conv_triton(
    conv,
    x: torch.Tensor,
    precision: str | None = None,
    bp: int | None = None,
    bk: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Run ``conv`` (a :class:`~edgeguard.compiler.SparseConv`) on ``x [N, C, D, H, W]`` float32."""
    if x.dtype != torch.float32:
        raise CompileError(f"{conv.name}: the Triton kernel takes float32 input, got {x.dtype}")
    precision = precision or getattr(conv, "precision", "ieee")
    bp = bp or getattr(conv, "triton_bp", 64)  # output positions per program
    bk = bk or getattr(conv, "triton_bk", 32)  # kept rows per dot
    num_warps = num_warps or getattr(conv, "triton_warps", 4)
    n = x.shape[0]
    g = conv.plan.geometry
    t = _tables(conv, x)
    lay = t["layout"]
    do, ho, wo = lay.out
    out = torch.empty(n, g.out_channels, do, ho, wo, device=x.device, dtype=torch.float32)
    nb = len(conv.plan.block_rows)
    if nb == 0:
        return out
    buf = lay.prepare(x.contiguous(), slack=bp)
    _hq, wq = lay.phased[1], lay.phased[2]
    grid = (triton.cdiv(lay.positions, bp), nb, n * do)
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
        BK=bk,
        BP=bp,
        RELU=conv.relu,
        PREC=precision,
        num_warps=num_warps,
    )
    return out
