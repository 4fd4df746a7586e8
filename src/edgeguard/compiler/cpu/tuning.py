"""Tuning heuristics of the CPU kernels: register tile, slice length, prefetch distance, chunking.

Each rule is the choice that measured fastest on C3D/R(2+1)D layers; the measurements behind them
are in docs/compiler.md ("Design decisions"), not here.
"""

from __future__ import annotations

from collections.abc import Callable

LONG_CHUNK_BYTES = 4 << 20  # kept weights past an L2: longer chunks, fewer passes over them
BL_GROUP_BYTES = 1 << 20  # a batch-last layer's kept weights past this: 2 filter groups
STREAM_MIN_BYTES = 8 << 20  # a sample's output past two L2s: streamed (non-temporal) stores
# batch-1 row fills take a slot a thread (kernels/conv.cpp, row_fills) while the slots past the
# batch's own samples stay within this; past it (large planes on many threads) they fill one
# shared buffer and meet at a barrier
ROW_SLOT_BYTES = 64 << 20
FV_MAX_POSITIONS = 16  # filter-vectorised tiles for output planes up to this many positions
PF_L1_BYTES = 32 << 10  # a tile's input within 2/3 of a 48 KB L1d: no prefetching
PAIRED_FV = True  # two positions a vector where they fit (False: one, everywhere; A/B timing)
FV_TILE, FV_TILE_AVX2 = 16, 12  # positions per filter-vectorised tile (accumulator registers)


def paired_fv(vector_floats: int, mr: int, wo: int) -> bool:
    """Whether filter-vectorised tiles put two output positions in a vector (``fv_pair_tile``):
    16-float vectors (AVX-512), 8-filter blocks, even output widths (each pair in one row, next
    to each other in every input row)."""
    return PAIRED_FV and vector_floats == 16 and mr == 8 and wo % 2 == 0


def filter_vectors(vector_floats: int, mr: int, out: tuple[int, int, int], other: bool) -> bool:
    """Whether a layer gets filter-vectorised tiles (one vector of its 8 filters per output
    position, two positions a vector where :func:`paired_fv`): output planes of at most
    ``FV_MAX_POSITIONS`` positions (a 4 x 4 plane in rows padded to 6 fills half of a
    position-vectorised tile; 8 x 8 planes in paired tiles ran 0.9x their position tiles),
    8-filter blocks, and not ``other`` (a fused pool, packed rows)."""
    _, ho, wo = out
    return not other and mr == 8 and vector_floats >= 8 and ho * wo <= FV_MAX_POSITIONS


def register_tile(vector_floats: int) -> tuple[int, int]:
    """Default register tile ``(mr, nv)``: filters per block and vectors of output positions.

    16-float vectors (AVX-512, 32 registers): 8 x 2 (16 accumulators, a whole KGS group of 8
    filters per block); 4- and 8-float vectors (NEON, AVX2, 16 registers): 4 x 3 (12)."""
    return (8, 2) if vector_floats >= 16 else (4, 3)


def vectors_per_tile(
    vector_floats: int,
    positions: int,
    mr: int,
    row_aligned: Callable[[int], bool] | None = None,
    out_positions: int = 0,
) -> int:
    """Vectors per tile for a layer with ``positions`` output positions per depth plane (flat
    tiles over padded rows), ``out_positions`` (``Ho * Wo``) where tiles follow the output rows.

    With 16-float vectors and 8-filter blocks the tile is 8 x 2 or 8 x 3 (24 accumulators, 28 of
    the 32 registers), whichever computes fewer positions once the plane is cut into tiles,
    counting a 3-vector position at 0.95 of a 2-vector one (fewer (block, slice, tile) entries and
    one broadcast per 3 FMAs instead of 2); where ``nv`` vectors give row-aligned tiles
    (``row_aligned(nv)``, :func:`codegen.row_aligned`) they count ``out_positions``, and 2 is
    taken where only 2 give them (32-, 64-, 128-wide planes: no padding column computed, whole
    aligned stores).  Other targets: :func:`register_tile`.  Never more vectors than the plane
    fills: a batch-1 linear layer (one position) gets 1."""
    default = min(register_tile(vector_floats)[1], -(-positions // vector_floats))
    if vector_floats < 16 or mr * 3 + 4 > 32 or default < 2:
        return default
    ra = {nv: row_aligned is not None and out_positions > 0 and row_aligned(nv) for nv in (2, 3)}
    if ra[2] and not ra[3]:
        return 2

    def cost(nv: int) -> float:
        t, n = nv * vector_floats, out_positions if ra[nv] else positions
        return -(-n // t) * t * (0.95 if nv == 3 else 1.0)

    return min((2, 3), key=cost)


def default_slice_rows(vector_floats: int, tiles_plane: int = 8, temporal: bool = False) -> int:
    """Kept rows per slice (KC): every filter block of a task consumes one slice of the union rows
    for a tile before the next, so the slice's input rows stay in cache between blocks.

    16-float vectors (48 KB L1d, 1 MB L2 assumed): 2048 where a depth plane has at least 8 tiles
    (fewer (block, slice, tile) entries), else 512 (a few tiles per plane share each slice's
    weights from L2).  Without AVX-512: 256 (32 KB L1d), and 512 for a temporal kernel
    (``kd x 1 x 1``: no two rows of a tile share a cache line, so a slice never stays in L1)."""
    if vector_floats < 16:
        return 512 if temporal else 256
    return 2048 if tiles_plane >= 8 else 512


def default_prefetch(
    vector_floats: int, slice_rows: int, temporal: bool = False, footprint: int | None = None
) -> int:
    """Rows ahead (PF) whose input lines the inner loop prefetches, for slices of ``slice_rows``.

    The kept rows are a gather the hardware prefetcher cannot follow: 16 where a slice no longer
    fits L1 (more than 512 rows of 16-float vectors) unless ``footprint`` (bytes of input one tile
    reads over a slice's rows) fits ``PF_L1_BYTES`` in a spatial kernel: a tile's gather then hits
    L1 after its first block, its rows mostly in cache from the tile before (rows overlap), and the
    prefetches only cost load slots (ResNet-18's 32 x 32 layers, 64 channels).  A temporal
    kernel's tiles share no rows: each tile's first block streams them, prefetched.
    Without AVX-512: 8 for a temporal kernel, whose rows are separate planes streamed from DRAM,
    else 0 (the rows of a tile overlap and stay in L1)."""
    if vector_floats < 16:
        return 8 if temporal else 0
    if footprint is not None and not temporal and footprint <= PF_L1_BYTES:
        return 0
    return 16 if slice_rows > 512 else 0


def pool_rows(kh: int, ho: int, wq: int, t: int, row_bytes: int) -> int:
    """Output rows per chunk of a layer with a fused pool of ``kh`` rows: a multiple of ``kh``
    whose chunk wastes the fewest positions in its last, partly used tile (``wq`` positions a row,
    ``t`` a tile), the fewest rows among equals, with the chunk's scratch (``row_bytes`` a row)
    within 1 MB."""
    hc = ho // kh * kh
    best, best_cost = kh, None
    for rc in range(kh, hc + 1, kh):
        if rc > kh and rc * row_bytes > 1 << 20:
            break
        cost = -(-(rc * wq) // t) * t / (rc * wq)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = rc, cost
    return best


def chunking(
    tiles_plane: int,
    planes: int,
    blocks: int,
    ct: int | None,
    fg: int | None,
    weight_bytes: int = 0,
    batch_last: bool = False,
) -> tuple[int, int]:
    """Tiles per task (CT) and filter-block groups (FG); ``None`` picks the default.

    Every chunk reads the group's kept weights once.  Default: chunks of up to 4 tiles, fewer where
    a sample has under 128 tiles (>= 32 tasks per sample balance the threads), one group.  Layers
    whose kept weights pass :data:`LONG_CHUNK_BYTES` get chunks of up to 16 tiles in 2 filter
    groups instead, so the weights stream from L3/DRAM several times less often.  A batch-last
    kernel (a plane holds one image row of every sample) takes whole planes, in 2 filter groups
    where its kept weights pass :data:`BL_GROUP_BYTES`: its weights (the deep layers') are read
    once per plane and group, not once per tile."""
    long = weight_bytes > LONG_CHUNK_BYTES
    if ct is None:
        if batch_last:
            ct = tiles_plane
        else:
            ct = min(16, tiles_plane) if long else max(1, min(4, tiles_plane * planes // 32))
    if fg is None:
        fg = 2 if long or (batch_last and weight_bytes > BL_GROUP_BYTES) else 1
    return max(1, min(ct, tiles_plane)), max(1, min(fg, blocks))
