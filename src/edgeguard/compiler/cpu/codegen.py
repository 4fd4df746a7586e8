"""C++ generation for one sparse conv layer and input size.

The kernel itself is ``kernels/conv.cpp``, a real C++ file; generation only writes the header it
includes (``eg_layer.h``): the layer's shapes as ``constexpr``, its sparsity pattern as constant
tables (rows kept by each filter block, as buffer offsets; which filter each block slot writes)
and its ``mr x nv`` register tile unrolled into macros, so the compiler fully unrolls the tile.
Weights stay in a compact runtime panel (``[K_b, mr]`` per block, no per-weight index); the inner
loop loads ``nv`` input vectors of one kept row once and reuses them across the ``mr`` filters.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from functools import cache
from importlib import resources

import torch

from ..errors import CompileError
from ..layout import InputLayout
from ..plan import SparsePlan
from . import tuning
from .tuning import (
    FV_TILE,
    FV_TILE_AVX2,
    STREAM_MIN_BYTES,
    chunking,
    default_prefetch,
    default_slice_rows,
    filter_vectors,
    paired_fv,
    pool_rows,
)

INCLUDE = '#include "eg_layer.h"'


@cache
def template(name: str) -> str:
    """The text of ``kernels/<name>`` (package data)."""
    return resources.files(__package__).joinpath("kernels", name).read_text()


# code shared by several templates: ``#include "eg_part_<name>"`` is replaced by kernels/<name>
PART = re.compile(r'^#include "eg_part_([a-z_]+\.h)".*$', re.MULTILINE)


def render(name: str, header: str) -> str:
    """Template ``name`` with its ``#include "eg_layer.h"`` line replaced by ``header`` and each
    ``#include "eg_part_X.h"`` by ``kernels/X.h`` (after the header: parts use its constants):
    one self-contained translation unit (the cache keys on the whole text)."""
    text = template(name)
    if text.count(INCLUDE) != 1:
        raise CompileError(f"kernel template {name} must include eg_layer.h exactly once")
    text = PART.sub(lambda m: template(m.group(1)).rstrip("\n"), text)
    return text.replace(INCLUDE, header.rstrip("\n"))


def fmt_ints(values) -> str:
    """A C initialiser list body, 24 numbers a line (``0`` when empty)."""
    vals = [str(int(v)) for v in values]
    lines = [", ".join(vals[i : i + 24]) for i in range(0, len(vals), 24)]
    return ",\n  ".join(lines) if lines else "0"


def _table(ctype: str, name: str, size: str, values) -> str:
    return f"static const {ctype} {name}[{size}] = {{\n  {fmt_ints(values)}}};"


def shared_row_lists(rows_at: torch.Tensor, kb: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Each block's kept-row offsets (``rows_at[kb[b]:kb[b + 1]]``) stored once per distinct
    list: blocks keeping the same rows (all of them under column pruning) share one run of the
    table, ``KB[b]`` its start.  Returns the table and the new starts (the last entry: its
    length)."""
    table: list[torch.Tensor] = []
    start: dict[tuple[int, ...], int] = {}
    new_kb, size = [], 0
    for b in range(len(kb) - 1):
        seg = rows_at[kb[b] : kb[b + 1]]
        key = tuple(seg.tolist())
        if key not in start:
            start[key] = size
            table.append(seg)
            size += len(seg)
        new_kb.append(start[key])
    new_kb.append(size)
    return (torch.cat(table) if table else rows_at[:0]), new_kb


def with_dead_blocks(plan: SparsePlan) -> SparsePlan:
    """``plan`` with its dead filters (no kept weight) in blocks of no rows after the others, so
    that the kernel writes their output (the bias, plus a residual, through the activation) as it
    writes every other filter's: written from Python, the indexed copy kept a compiled model from
    replaying its forward as one native call."""
    nd = plan.dead.numel()
    if nd == 0 or not plan.block_rows:
        return plan
    nblocks = -(-nd // plan.mr)
    slots = torch.full((nblocks * plan.mr,), -1, dtype=torch.int64)
    slots[:nd] = plan.dead
    empty = torch.zeros(0, dtype=torch.int64)
    return replace(
        plan,
        filters=torch.cat([plan.filters, slots]),
        block_rows=[*plan.block_rows, *[empty] * nblocks],
        panels=[*plan.panels, *[torch.zeros(0, plan.mr)] * nblocks],
        dead=empty,
    )


def ridx_type(offsets: torch.Tensor) -> str:
    """The C type of a kernel's row offsets: 16 bits where they all fit (fewer bytes streamed a
    kept weight where the weights come from memory), else 32."""
    fits = len(offsets) == 0 or (int(offsets.min()) >= 0 and int(offsets.max()) < 1 << 16)
    return "uint16_t" if fits else "int32_t"


def _macro(name: str, lines: list[str]) -> str:
    return f"#define {name}" + "".join(f" \\\n  {line.strip()}" for line in lines)


def _bool(v: bool) -> str:
    return "true" if v else "false"


def register_tile_macros(mr: int, nv: int, nxm: int = 0) -> dict[str, list[str]]:
    """The ``mr x nv`` register tile of the kernel's ``tile()``, unrolled into named accumulators
    ``a{m}_{v}`` (filter m, vector v) and ``e{x}`` (extra position x, the ``mr`` filters): their
    initial load, the per-row FMAs, the save of partial sums and the arrays the store path reads.
    Vector ``v`` exists where ``v < NVT``, extra ``x`` where ``x < NX`` (template constants)."""
    acc = [[f"a{m}_{v}" for v in range(nv)] for m in range(mr)]

    def off(m: int, v: int) -> str:
        return f"accbuf + {m * nv + v} * VL"

    init = [
        f"vf {acc[m][v]}; if constexpr ({v} < NVT) "
        f"{acc[m][v]} = FIRST ? (vf){{}} + bv[{m}] : ld({off(m, v)});"
        for m in range(mr)
        for v in range(nv)
    ]
    init += [
        f"vm e{x}; if constexpr ({x} < NX) e{x} = FIRST ? ldm(bv) : ldm(accbuf + MR * T + {x} * MR);"
        for x in range(nxm)
    ]
    fma = [f"vf x{v}; if constexpr ({v} < NVT) x{v} = ldx(xr + VOFF[{v}], km);" for v in range(nv)]
    for m in range(mr):
        body = " ".join(f"if constexpr ({v} < NVT) {acc[m][v]} += x{v} * s;" for v in range(nv))
        fma.append(f"{{ const float s = wk[{m}]; {body} }}")
    if nxm:
        fma.append("if constexpr (NX > 0) { const vm wv = ldm(wk);")
        fma += [f"if constexpr ({x} < NX) e{x} += wv * xr[NVT * VL + {x}];" for x in range(nxm)]
        fma.append("}")
    save = [
        f"if constexpr ({v} < NVT) st({off(m, v)}, {acc[m][v]});"
        for m in range(mr)
        for v in range(nv)
    ]
    save += [f"if constexpr ({x} < NX) stm(accbuf + MR * T + {x} * MR, e{x});" for x in range(nxm)]
    array = [
        f"if constexpr ({v} < NVT) acc[{m}][{v}] = {acc[m][v]};"
        for m in range(mr)
        for v in range(nv)
    ]
    extra = [f"if constexpr ({x} < NX) ex[{x}] = e{x};" for x in range(nxm)]
    return {
        "EG_ACC_INIT": init,
        "EG_ACC_FMA": fma,
        "EG_ACC_SAVE": save,
        "EG_ACC_ARRAY": array,
        "EG_EXTRA_ARRAY": extra,
    }


def tile_kind(rem: int, nv: int, vl: int, nxm: int) -> tuple[int, int]:
    """``(vectors, extra positions)`` of a chunk's last tile with ``rem`` positions left (at most
    ``nv * vl + nxm``): whole vectors, and a remainder of at most ``nxm`` positions as extras
    rather than one more vector.  The kernel reads it from the generated ``TILE_KIND`` table."""
    t = nv * vl
    if rem > t:
        return nv, rem - t
    q, r = divmod(rem, vl)
    if r == 0:
        return q, 0
    return (q, r) if q > 0 and r <= nxm else (q + 1, 0)


def last_tiles(layout: InputLayout, tflat: int, ct: int, rc: int, hc: int | None, nxm: int) -> set:
    """The positions left at the last tile of every chunk, as the kernel cuts its planes (``hc``:
    the output rows a fused pool uses, chunks of ``rc`` rows; ``None``: chunks of ``ct`` tiles)."""
    wo = layout.out[2]
    wq, npos = layout.phased[2], layout.positions
    if hc is not None:
        ends = [(hb * wq, (min(hb + rc, hc) - 1) * wq + wo) for hb in range(0, hc, rc)]
    else:
        ch = ct * tflat
        ends = [(c, min(c + ch, npos)) for c in range(0, npos, ch)]
    rems = set()
    for beg, end in ends:
        p0 = beg
        while end - p0 > tflat + nxm:
            p0 += tflat
        if end > p0:
            rems.add(end - p0)
    return rems


def out_bytes(plan: SparsePlan, layout: InputLayout) -> int:
    """Bytes of one sample's output of a layer at ``layout``."""
    do, ho, wo = layout.out
    return plan.geometry.out_channels * do * ho * wo * 4


def row_aligned(layout: InputLayout, t: int, vl: int, other: bool) -> bool:
    """Whether a kernel's tiles follow the output rows (``RA``): tiles of ``t`` positions numbered
    in the output's own row-major order (no padding columns computed), each of its vectors inside
    one output row, so a tile is stored as whole aligned vectors.  For output widths that a tile
    divides or that divide a tile in whole vectors (32 or 16 wide planes at 32-position tiles), in
    buffers whose rows hold padding columns; not with ``other`` (filter-vectorised or batch-last
    tiles, packed rows, a fused pool)."""
    wo, wq = layout.out[2], layout.phased[2]
    return not other and wq != wo and (wo % t == 0 or (t % wo == 0 and wo % vl == 0))


def wide_plane(layout: InputLayout, t: int, vl: int, other: bool) -> int:
    """Plane stride (floats) of a kernel's *wide* output, 0 where it stores a plain one.

    A wide output keeps the buffer's row pitch: output position ``p = h * Wq + w`` of a plane is
    stored at ``p`` (the ``Wq - Wo`` columns computed past each row end kept, never read), planes
    ``OPS`` floats apart (a multiple of 16, so every plane starts on a cache line), so a tile is
    stored as whole aligned vectors instead of masked pieces of two rows.  For flat tiles over
    padded rows (``Wq > Wo``, not row-aligned) and not with ``other`` (filter-vectorised or
    batch-last tiles, packed rows, a fused pool); a residual is then read in the same layout."""
    if other or layout.phased[2] == layout.out[2] or row_aligned(layout, t, vl, other):
        return 0
    return -(-(layout.out[1] * layout.phased[2]) // 16) * 16


def tile_footprint(offsets: torch.Tensor, positions: int, t: int) -> int:
    """Bytes of input (64-byte lines) that a tile of ``t`` positions in the middle of a plane of
    ``positions`` reads over kept rows at buffer ``offsets`` (floats)."""
    if len(offsets) == 0:
        return 0
    p0 = max(0, positions // 2 - t // 2)
    at = offsets.to(torch.int64)[:, None] + p0 + torch.arange(t)
    return int(torch.unique(at // 16).numel()) * 64


def is_temporal(g) -> bool:
    """A temporal kernel (``kd x 1 x 1``, kd > 1): its tasks take the planes innermost."""
    return g.kernel[0] > 1 and g.kernel[1] == g.kernel[2] == 1


def contiguous_strides(layout: InputLayout) -> tuple[int, int, int, int, int]:
    """Strides of a contiguous ``[N, C, D, H, W]`` input of ``layout``."""
    d, h, w = layout.size
    c = layout.geometry.in_channels
    return (c * d * h * w, d * h * w, h * w, w, 1)


def generate_source(
    plan: SparsePlan,
    layout: InputLayout,
    nv: int,
    vl: int,
    relu: bool,
    name: str = "conv",
    ct: int | None = None,
    kc: int | None = None,
    gn: int = 4,
    pf: int | None = None,
    fg: int | None = None,
    pack: bool = False,
    pool: tuple[int, int, int] = (1, 1, 1),
    source_strides: tuple[int, int, int, int, int] | None = None,
    residual: bool = False,
    fv: bool | None = None,
    batch_last: tuple[int, bool, bool] = (0, False, False),
    slope: float = 0.0,
    cap: float = math.inf,
    wide: bool = False,
    wide_ops: int = 0,
    res_plane: int = 0,
) -> tuple[str, torch.Tensor]:
    """C++ source of one layer's kernel for one input size, and the order (indices into the plan's
    concatenated panels) in which the kernel expects the weight rows.  ``ct`` (tiles per task) and
    ``fg`` (filter-block groups): see :func:`tuning.chunking`; ``kc``: rows per slice (default
    :func:`tuning.default_slice_rows`); ``pf``: prefetch distance in rows (default
    :func:`tuning.default_prefetch`); ``pack``: copy each tile's kept rows into a contiguous buffer
    first (the older scheme) instead of reading them where they lie in the input buffer (the
    default: the rows of one tile overlap, kw shifts by one float, so reading in place touches a
    third of the cache lines the copy writes).  ``pool``: a fused max pool ``(kd, kh, kw)``
    (stride = window, no padding, floor) applied after the activation; ``(1, 1, 1)``: none.
    ``source_strides``: where the kernel's fill of its padded (phase) buffer reads element
    ``(n, c, d, h, w)`` of its input, as strides of the raw input it is given (a subsample or a
    transpose of a layer's input, read straight from that input); None: the input is
    ``[N, C, D, H, W]`` contiguous.  ``residual``: the kernel adds a tensor of the output's shape
    before the ReLU (a residual sum after the conv); not with a fused pool.  ``fv``: filter-
    vectorised tiles (one vector of the block's filters per output position); None: where
    :func:`tuning.filter_vectors` says (planes of a few positions).  ``batch_last``: ``(n,
    residual, relu)`` of a batch-last kernel (its input the ``[1, C, H, W, N]`` view, ``n = N``):
    after its tiles it transposes its output into ``[N, M, H, W]`` itself, adding a residual
    and then the ReLU there when asked; ``(0, False, False)``: not batch-last.  ``slope``: the
    fused ReLU is a leaky ReLU of this negative slope (0: a ReLU).  ``cap``: the fused ReLU
    is capped at this (ReLU6: 6; inf: not).  ``wide``: store a wide output
    where :func:`wide_plane` allows (its plane stride, the kernel's ``OPS``); ``wide_ops``: a
    larger plane stride for it (a multiple of 16: a reader's padded planes), 0: its own; the
    lanes of positions past each row end and past the plane's last position are then stored as
    zero (``ZJ``: they are the reader's padding).
    ``res_plane``: the residual's plane stride where it differs from a wide output's (rows as the
    output's), 0: the output's."""
    if residual and pool != (1, 1, 1):
        raise CompileError("a kernel cannot both add a residual and fuse a max pool")
    if fv is None:
        fv = filter_vectors(vl, plan.mr, layout.out, pool != (1, 1, 1) or pack)
    if fv and (plan.mr != 8 or pool != (1, 1, 1) or pack):
        raise CompileError("filter-vectorised tiles need blocks of 8 filters, no pool, no packing")
    if fv:  # one group of blocks (FV tasks take single blocks)
        fg = 1
    plan = with_dead_blocks(plan)
    nb = len(plan.block_rows)
    start = [0]
    for rows in plan.block_rows:
        start.append(start[-1] + len(rows))
    do, ho, wo = layout.out
    tiles_plane = -(-layout.positions // (nv * vl))
    kept = sum(len(rows) for rows in plan.block_rows) * plan.mr * 4
    ct, fg = chunking(tiles_plane, do, nb, ct, fg, kept, batch_last=batch_last[0] > 0)
    pool = tuple(int(k) for k in pool)
    if len(pool) != 3 or min(pool) < 1 or any(k > n for k, n in zip(pool, layout.out, strict=True)):
        raise CompileError(
            f"pool must be 3 window sizes within the output {layout.out}, got {pool}"
        )
    rc = 1
    if pool != (1, 1, 1):  # a chunk is rc rows: its tiles, scratch and the positions it wastes
        if ct >= tiles_plane:  # whole planes already (long chunks): the same with a pool
            rc = ho // pool[1] * pool[1]
        else:
            row_bytes = -(-nb // fg) * plan.mr * wo * pool[0] * 4
            rc = pool_rows(pool[1], ho, layout.phased[2], nv * vl, row_bytes)
        ct = -(-(rc * layout.phased[2]) // (nv * vl))
    # Kernel block order: group g takes blocks g, g + FG, ... of the longest-first list, so the
    # groups get about the same number of rows.
    border = [b for g in range(fg) for b in range(g, nb, fg)]
    bg = [0]
    for g in range(fg):
        bg.append(bg[-1] + len(range(g, nb, fg)))
    block_rows = [plan.block_rows[b] for b in border]
    filters = plan.filters.view(-1, plan.mr)[border].flatten() if nb else plan.filters
    kb = [0]
    for rows in block_rows:
        kb.append(kb[-1] + len(rows))
    # Rows are visited in (channel group, kernel location, channel) order: the gn channels of one
    # KGS unit are then adjacent in the packed buffer (one dense gm x gn block in the location-major
    # view W[F, k*C]), so a block's loads walk the packed rows in runs.
    # Kernel depth kd is the major key: a plane whose kd taps read depth padding skips them as one
    # run of every block's rows (KS, KLO, KHI in the kernel).
    L, G = plan.geometry.locations, max(1, gn)
    KD = plan.geometry.kernel[0]
    LHW = L // KD
    span = -(-plan.geometry.in_channels // G) * G * LHW  # keys per kd
    keyed, perm = [], []
    for rows in block_rows:
        c, loc = rows // L, rows % L
        key = (loc // LHW) * span + (c // G) * (LHW * G) + (loc % LHW) * G + c % G
        key, p = torch.sort(key)
        keyed.append(key)
        perm.append(p)
    keys = torch.cat(keyed) if keyed else torch.zeros(1, dtype=torch.int64)
    ukeys, ridx = torch.unique(keys, return_inverse=True)
    kd_, a = ukeys // span, ukeys % span  # back to row ids
    union = ((a // (LHW * G)) * G + a % G) * L + kd_ * LHW + (a // G) % LHW
    uroff = layout.row_offsets(union)
    if len(uroff) == 0 or int(uroff.max()) + layout.positions >= 2**31:
        pack = True  # int32 buffer offsets would overflow: pack
    temporal = is_temporal(plan.geometry)  # planes innermost; unpacked, also slices and prefetch
    fv = fv and not pack  # (int32 offsets overflowing forced packing)
    if fv:  # one slice: a task is one block over a whole plane
        kc, pf = 1 << 30, 0
    kc = kc or default_slice_rows(vl, 0 if pack else tiles_plane, temporal and not pack)
    if pf is None:
        foot = None if pack else tile_footprint(uroff[:kc], layout.positions, nv * vl)
        pf = default_prefetch(vl, kc, temporal and not pack, foot)
    ns = max(1, -(-len(union) // kc))
    ks = torch.zeros(max(nb, 1), ns + 1, dtype=torch.int64)
    kds = torch.zeros(max(nb, 1), ns, KD + 1, dtype=torch.int64)
    for b in range(nb):
        ks[b] = torch.searchsorted(ridx[kb[b] : kb[b + 1]], torch.arange(ns + 1) * kc)
        at = torch.searchsorted(keyed[b], torch.arange(KD + 1) * span)  # first row with kd >= j
        kds[b] = torch.maximum(torch.minimum(at[None, :], ks[b, 1:, None]), ks[b, :-1, None])
    klo, khi = zip(*layout.depth_taps(), strict=True)
    order, woff = [], torch.zeros(max(nb, 1), ns, dtype=torch.int64)
    for sl in range(ns):
        for b in range(nb):
            woff[b, sl] = len(order)
            order += (start[border[b]] + perm[b][int(ks[b, sl]) : int(ks[b, sl + 1])]).tolist()
    dq, hq, wq = layout.phased
    mc = layout.masked_columns
    if mc and (vl != 16 or pack or fv or pool != (1, 1, 1) or batch_last[0] > 0):
        raise CompileError(
            "masked columns need 16-float vectors and plain tiles (no packing, filter-vectorised "
            "tiles, pool or batch-last view)"
        )
    lists, kb = shared_row_lists(ridx, kb)  # (union indices: one mask per row too)
    rows_at = lists * nv * vl if pack else uroff[lists]
    # MC: each row's lane mask (its kernel column's, on rows of the input's own width)
    rmk = layout.column_masks(union, vl)[lists].tolist() + [0] * pf if mc else [0]
    t = nv * vl
    other = fv or pack or pool != (1, 1, 1) or batch_last[0] > 0
    ra = row_aligned(layout, t, vl, other)
    # vector v of a tile reads its positions at VOFF[v] from the tile's first one
    voff = [(v * vl // wo) * wq + v * vl % wo if ra else v * vl for v in range(nv)]
    ops = wide_plane(layout, t, vl, other) if wide else 0
    zero_junk = bool(ops and wide_ops)
    if zero_junk:
        if wide_ops < ops or wide_ops % 16:
            raise CompileError(f"wide_ops {wide_ops} must be a multiple of 16 >= {ops}")
        ops = wide_ops
    # ZJ's lane masks: -1 for a real output position, 0 past a row end or the plane's last one
    npos, wq_ = layout.positions, layout.phased[2]
    jmv = (
        [-1 if p % wq_ < layout.out[2] and p < npos else 0 for p in range(-(-npos // 16) * 16)]
        if zero_junk
        else [0]
    )
    # Streaming stores for outputs past the caches (not a pool's scratch, not batch-last: those
    # are read back by the kernel itself).
    nt = pool == (1, 1, 1) and batch_last[0] == 0 and out_bytes(plan, layout) >= STREAM_MIN_BYTES
    # Extra positions (see NXM): with AVX-512's 32 registers only, rows read in place, flat tiles.
    nxm = 2 if vl >= 16 and not pack and not ra and not mc else 0
    hc = ho // pool[1] * pool[1] if pool != (1, 1, 1) else None
    cases = [
        f"case {nvt * 8 + nx}: tile<FIRST, LAST, {nvt}, {nx}>"
        "(pk, ridx, k0, k1, wb, bv, accbuf, op, rp, p0, pl, hb, wpf); break;"
        for nvt, nx in sorted(
            {tile_kind(r, nv, vl, nxm) for r in last_tiles(layout, t, ct, rc, hc, nxm)}
        )
    ]
    kinds = [nvt * 8 + nx for nvt, nx in (tile_kind(r, nv, vl, nxm) for r in range(t + nxm + 1))]
    g = plan.geometry
    pd, ph, pw = layout.stored_padding  # the fill's offsets into the buffer
    if layout.virtual_depth and pack:
        raise CompileError("a kernel reading its input in place (virtual depth) cannot pack rows")
    npt = FV_TILE if vl >= 16 else FV_TILE_AVX2
    # pairs of positions a vector (fv_pair_tile) where a row holds whole pairs, on AVX-512
    fvp = fv and paired_fv(vl, plan.mr, wo)
    fv_cases = (
        [
            f"{'fv_pair_tile' if fvp else 'fv_tile'}<{p0}, {min(npt, ho * wo - p0)}>"
            "(xb, RIDX, k0, k1, wb, bv, op, rp);"
            for p0 in range(0, ho * wo, npt)
        ]
        if fv
        else []
    )
    poff = [(q // wo) * wq + q % wo for q in range(ho * wo)] if fv else [0]
    header = [
        f"// generated by edgeguard.compile: {name}",
        f"#define VL {vl}",
        f"constexpr int MR = {plan.mr}, NV = {nv}, CT = {ct}, FG = {fg}, "
        f"NBG = {max(1, -(-nb // fg))}, NXM = {nxm};",
        f"constexpr int NB = {nb}, M = {g.out_channels}, DO = {do}, HO = {ho}, WO = {wo}, "
        f"WQ = {wq}, P = {layout.positions};",
        f"constexpr int64_t XN = {layout.batch_stride}, XD = {layout.plane_stride}, "
        f"ROW_SLOT_BYTES = {tuning.ROW_SLOT_BYTES};",
        f"constexpr bool WIDE = {_bool(ops > 0)}; constexpr int64_t OPS = {ops}, "
        f"RPL = {res_plane if ops and residual else 0};",
        f"constexpr bool ZJ = {_bool(zero_junk)};",
        _table("int32_t", "JMV", str(len(jmv)), jmv),
        f"constexpr bool RA = {_bool(ra)}, NT = {_bool(nt)}, MC = {_bool(mc)};",
        f"constexpr int MCS = {layout.column_shift};",
        _table("uint16_t", "RMK", "", rmk),
        f"constexpr int VOFF[NV] = {{{', '.join(map(str, voff))}}};",
        f"constexpr bool RELU = {_bool(relu)}, FUSE = {_bool(layout.phases == 1)}, "
        f"PACK = {_bool(pack)}, PLANES_INNER = {_bool(temporal)}, RES = {_bool(residual)}, "
        f"FV = {_bool(fv)};",
        f"constexpr float SLOPE = {float(slope)!r}f; "
        f"constexpr bool CAPPED = {_bool(cap < math.inf)}; "
        f"constexpr float CAP = {float(cap) if cap < math.inf else 0.0!r}f; "
        f"constexpr int BLN = {int(batch_last[0])}; "
        f"constexpr bool BLRES = {_bool(batch_last[1])}, BLRELU = {_bool(batch_last[2])};",
        f"constexpr int CIN = {g.in_channels}, DI = {layout.size[0]}, HI = {layout.size[1]}, "
        f"WI = {layout.size[2]}, PD = {pd}, PH = {ph}, PW = {pw};",
        f"constexpr int DQ = {dq}, HQ = {hq}, SD = {g.stride[0]}, SH = {g.stride[1]}, "
        f"SW = {g.stride[2]};",
        "constexpr int64_t "
        + ", ".join(
            f"XS{i} = {v}" for i, v in enumerate(source_strides or contiguous_strides(layout))
        )
        + ";",
        f"constexpr int PKD = {pool[0]}, PKH = {pool[1]}, PKW = {pool[2]}, RC = {rc};",
        f"constexpr int KU = {len(union)}, KC = {kc}, NS = {ns}, PF = {pf}, KD = {KD};",
        _table("int32_t", "KB", "NB + 1", kb),
        _table("int64_t", "UROFF", "KU", uroff.tolist()),
        f"typedef {ridx_type(rows_at)} ridx_t;",
        _table("ridx_t", "RIDX", "", rows_at.tolist() + [0] * pf),
        _table("int32_t", "FIL", "NB * MR", filters.tolist()),
        _table("int32_t", "BG", "FG + 1", bg),
        _table("int32_t", "KS", "NB * NS * (KD + 1)", kds.flatten().tolist()),
        _table("int32_t", "KLO", "DO", klo),
        _table("int32_t", "KHI", "DO", khi),
        _table("int32_t", "WOFF", "NB * NS", woff.flatten().tolist()),
        _table("int32_t", "TILE_KIND", str(len(kinds)), kinds),
        _table("int32_t", "FV_POFF", str(len(poff)), poff),
        _macro("EG_FV_CASES", fv_cases),
        *(_macro(k, v) for k, v in register_tile_macros(plan.mr, nv, nxm).items()),
        _macro("EG_TILE_CASES", cases),
    ]
    return render("conv.cpp", "\n".join(header)), torch.tensor(order, dtype=torch.int64)
