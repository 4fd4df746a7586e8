"""CPU backend: C++ generated per layer and input size, compiled with the system compiler via ninja.

Each layer's kernel has its sparsity pattern baked in as constant tables (rows kept by each filter
block, as buffer offsets; which filter each block slot writes), its shapes as ``constexpr`` and the tile
``mr x nv`` vectors as template constants, so the compiler fully unrolls the register tile.  Weights
stay in a compact runtime panel (``[K_b, mr]`` per block, no per-weight index).  The inner loop loads
``nv`` input vectors of one kept row once and reuses them across the ``mr`` filters of the block.

Built objects are cached under ``$EDGEGUARD_CACHE`` (default ``~/.cache/edgeguard/kernels``) by a hash
of the source, compiler and flags; the library's own SHA-256 is recorded beside it and checked before
loading, so a corrupted or tampered entry is rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ..errors import EdgeguardError
from .errors import CompileError
from .layout import InputLayout
from .plan import SparsePlan

log = logging.getLogger(__name__)


class CompilerUnavailable(EdgeguardError, RuntimeError):
    """No working C++ compiler (or ninja) on this machine."""


@dataclass(frozen=True)
class Target:
    """A code-generation target: compiler command, flags and SIMD width in floats."""

    cxx: str
    flags: tuple[str, ...]
    vector_floats: int

    @property
    def tile(self) -> tuple[int, int]:
        """Default register tile ``(mr, nv)``: filters per block and vectors of output positions.

        16-float vectors (AVX-512, 32 registers): 8 x 2 (16 accumulators, a whole KGS group of 8
        filters per block); 4- and 8-float vectors (NEON, AVX2, 16 registers): 4 x 3 (12).  Measured
        on C3D's conv2-conv5a at 4x (Zen 5, 2 threads): 8 x 2 is 0.92-0.98x the time of 4 x 3 at 16
        floats (0.72x on conv5a, whose 63-position planes fit 32-position tiles better), and 16-float
        vectors are 0.58-0.62x the time of 8-float ones on the same machine."""
        return (8, 2) if self.vector_floats >= 16 else (4, 3)

    def nv_for(self, positions: int, mr: int) -> int:
        """Vectors per tile for a layer with ``positions`` output positions per depth plane.

        With 16-float vectors and 8-filter blocks the tile is 8 x 2 or 8 x 3 (24 accumulators, 28
        of the 32 registers), whichever computes fewer positions once the plane is cut into
        tiles, counting a 3-vector position at 0.95 of a 2-vector one (fewer (block, slice, tile)
        entries and one broadcast per 3 FMAs instead of 2).  Measured at 4x, Zen 5, 2 threads:
        8 x 3 takes 0.89x the time on conv1, 0.95-0.96x on conv2-conv3b and 1.04x on conv4a/4b
        (209 positions: 5 tiles of 48 vs 7 of 32), 1.37x on conv5a (55: 2 tiles of 48 vs 2 of 32).
        Other targets: :attr:`tile`.  Never more vectors than the plane fills: a batch-1 linear
        layer (one position) gets 1 (C3D's fc6 at 3.6x with 8 x 1 tiles: 0.61x the time of 4 x 3,
        AVX2 Zen 3)."""
        default = min(self.tile[1], -(-positions // self.vector_floats))
        if self.vector_floats < 16 or mr * 3 + 4 > 32 or default < 2:
            return default

        def cost(nv: int) -> float:
            t = nv * self.vector_floats
            return -(-positions // t) * t * (0.95 if nv == 3 else 1.0)

        return min((2, 3), key=cost)

    @property
    def key(self) -> str:
        return (
            f"{self.cxx}|{' '.join(self.flags)}|{self.vector_floats}|{_compiler_version(self.cxx)}"
        )


def default_slice_rows(vector_floats: int, tiles_plane: int = 8, temporal: bool = False) -> int:
    """Kept rows per slice (KC): every filter block of a task consumes one slice of the union rows
    for a tile before the next, so the slice's input rows stay in cache between blocks.

    16-float vectors (Zen 5, 48 KB L1d, 1 MB L2): 2048 where a depth plane has at least 8 tiles
    (C3D's conv2-conv3b at 4x with the prefetch of :func:`default_prefetch`: 0.94-0.98x the
    time of 512 without it, orders of the variants rotated; fewer (block, slice, tile)
    entries), else 512 (conv4/conv5, a few tiles per plane that share each slice's weights
    from L2: 2048 took 1.02-1.13x the time).
    Without AVX-512: 256 (32 KB L1d), and 512 for a temporal kernel (``kd x 1 x 1``: no two rows
    of a tile share a cache line, so a slice never stayed in L1; see :func:`default_prefetch`)."""
    if vector_floats < 16:
        return 512 if temporal else 256
    return 2048 if tiles_plane >= 8 else 512


def default_prefetch(vector_floats: int, slice_rows: int, temporal: bool = False) -> int:
    """Rows ahead (PF) whose input lines the inner loop prefetches, for slices of ``slice_rows``.

    The kept rows are a gather the hardware prefetcher cannot follow, and a 2048-row slice of
    input rows no longer fits L1: 16 there (C3D's conv2-conv3b at 4x: 0.97-0.98x the time of no
    prefetch, orders of the variants rotated).  With 512-row slices the rows stay in L1 and the
    prefetches only cost issue slots (conv4b/conv5a: 0.96-1.05x without): 0.  Without
    AVX-512: 8 for a temporal kernel, whose rows are separate planes streamed from DRAM
    (R(2+1)D's 144 -> 64 temporal conv at 16 x 56 x 56, 3.6x KGS, 32 MB of input: 0.82x the time
    with 512-row slices, 0.87-0.94x with 256; 0.97x at 8 x 28 x 28, whose 9 MB stay in L3; AVX2 Zen 3,
    2 threads), else 0 (the rows of a tile overlap and stay in L1; C3D's convs: noise)."""
    if vector_floats < 16:
        return 8 if temporal else 0
    return 16 if slice_rows > 512 else 0


@cache
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"


def host_target() -> Target:
    """Target for this machine: ``$CXX`` (default g++ / c++), -O3 -march=native, OpenMP; 16-float
    vectors where the CPU has AVX-512 (``EDGEGUARD_NO_AVX512=1`` keeps 8), else 8 (4 on aarch64)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or ""
    if not cxx or shutil.which(cxx) is None:
        raise CompilerUnavailable("no C++ compiler found (set CXX or install g++)")
    machine = platform.machine()
    cpu_flags, flag_set = "", set()
    try:  # -march=native objects are only valid on this CPU: key the cache on its flags
        line = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0]
        flag_set = set(line.replace(":", " ").split())
        cpu_flags = hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    if machine in ("aarch64", "arm64"):
        vl = 4
    else:  # AVX-512 doubles the work per instruction: on Zen 5 the layers run 1.6-1.7x faster
        vl = 16 if "avx512f" in flag_set and not os.environ.get("EDGEGUARD_NO_AVX512") else 8
    flags = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17",
             "-ffp-contract=fast", f"-DEG_CPU={cpu_flags or machine}")  # fmt: skip
    return Target(cxx, flags, vl)


def _fmt_ints(values) -> str:
    vals = [str(int(v)) for v in values]
    lines = [", ".join(vals[i : i + 24]) for i in range(0, len(vals), 24)]
    return ",\n  ".join(lines) if lines else "0"


KERNEL_TEMPLATE = r"""// generated by edgeguard.compile: {name}
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VL {vl}
#if defined(__AVX512F__) && VL == 16
#define EG_MASKED_STORES 1  // tiles crossing row ends are stored with masked stores (tile())
#else
#define EG_MASKED_STORES 0
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
static inline vf ld(const float* p) {{ vf v; std::memcpy(&v, p, sizeof v); return v; }}
static inline void st(float* p, vf v) {{ std::memcpy(p, &v, sizeof v); }}

constexpr int MR = {mr}, NV = {nv}, T = NV * VL, CT = {ct}, FG = {fg}, NBG = {nbg};
// A chunk's last tile computes only the vectors its positions need, and up to NXM positions past
// its last whole vector as "extra" positions: one MR-float accumulator each (the block's filters),
// the input value broadcast.  C3D's 14 x 14 planes are 209 positions, 13 vectors + 1: the extra
// position replaces a 14th vector.  TS: floats of one tile's partial sums.
constexpr int NXM = {nxm}, TS = MR * T + NXM * MR;
typedef float vm __attribute__((vector_size(MR * 4)));
static inline vm ldm(const float* p) {{ vm v; std::memcpy(&v, p, sizeof v); return v; }}
static inline void stm(float* p, vm v) {{ std::memcpy(p, &v, sizeof v); }}
constexpr int NB = {nb}, M = {m}, DO = {do_}, HO = {ho}, WO = {wo}, WQ = {wq}, P = {p};
constexpr int64_t XN = {xn}, XD = {xd}, OPLANE = (int64_t)HO * WO;
constexpr bool RELU = {relu};
// FUSE: the kernel copies the raw input [N, CIN, DI, HI, WI] into the padded buffer itself (stride 1
// on every axis: no phase split), by the same threads, before computing.
constexpr bool FUSE = {fuse};
constexpr int CIN = {cin}, DI = {di}, HI = {hi}, WI = {wi}, PD = {pd}, PH = {ph}, PW = {pw};
constexpr int DQ = {dq}, HQ = {hq};
// Fused max pooling (PKD x PKH x PKW windows, stride = window, no padding, floor; 1 x 1 x 1: none):
// a task computes whole windows (RC output rows of PKD planes) into its own scratch and writes
// only the pooled output, so the unpooled activations never reach memory.
constexpr int PKD = {pkd}, PKH = {pkh}, PKW = {pkw}, RC = {rc};
constexpr bool POOL = PKD * PKH * PKW > 1;
constexpr bool PLANES_INNER = {planes_inner};
constexpr int DOP = DO / PKD, HOP = HO / PKH, WOP = WO / PKW;
static const int32_t KB[NB + 1] = {{
  {kb}}};
// Union of the rows any block keeps, as input-buffer offsets (the rows the packing copy reads).
constexpr int KU = {ku};
static const int64_t UROFF[KU] = {{
  {uroff}}};
// PACK = false (default): no packing, each kept row is read where it lies in the input buffer, so
// the first touch of a row overlaps with the FMAs instead of a copy loop; RIDX holds its offset
// there.  PACK = true: rows are copied into a packed tile first; RIDX holds union row * T.
// + PF zeros: prefetch indices past a block's end stay inside the table.
constexpr bool PACK = {pack};
static const int32_t RIDX[] = {{
  {ridx}}};
static const int32_t FIL[NB * MR] = {{
  {fil}}};
// Blocks are split into FG groups (block ranges of at most NBG blocks, balanced in rows); a task
// runs one group, so long chunks (fewer reads of each weight) still leave enough tasks.
static const int32_t BG[FG + 1] = {{
  {bg}}};
// The union rows are cut into NS slices of KC rows (packed, a slice stays in L1 while every filter
// block consumes it).  Rows are ordered kernel depth kd first, so the rows of one kd are a run in
// every (block, slice): KS[(b * NS + s) * (KD + 1) + j] is where block b's rows of slice s with
// kd >= j start (j = KD: the slice's end).
constexpr int KC = {kc}, NS = {ns}, PF = {pf}, KD = {kd};
static const int32_t KS[NB * NS * (KD + 1)] = {{
  {ks}}};
// Output plane d reads real input (not depth padding) only for kd in [KLO[d], KHI[d]): the other
// rows multiply zeros and are skipped (C3D's conv4b, 4 planes: a sixth of its taps; conv5: a third).
static const int32_t KLO[DO] = {{
  {klo}}};
static const int32_t KHI[DO] = {{
  {khi}}};
static const int32_t WOFF[NB * NS] = {{
  {woff}}};

template <bool FIRST, bool LAST, int NVT, int NX>
static inline void tile(const float* __restrict pk, const int32_t* __restrict ridx, int k0, int k1,
                        const float* __restrict wb, const float* bv, float* accbuf,
                        float* const* op, int p0, int pl, int hb) {{
  // The accumulators are named variables (generated for MR x NV), not an array: GCC kept an
  // array in memory at every call's entry and exit (36 spills and reloads per call).
{acc_init}
#pragma GCC unroll 2
  for (int k = k0; k < k1; ++k) {{
    const float* xr = pk + ridx[k];  // RIDX holds the row's offset from pk: no multiply
    if (PF > 0) {{  // the rows are a gather: the hardware prefetcher cannot guess them
      const float* nx = pk + ridx[k + PF];
#pragma GCC unroll 8
      for (int o = 0; o < T; o += 16) __builtin_prefetch(nx + o);  // every 64-byte line
      __builtin_prefetch(nx + T + 1);
    }}
    const float* wk = wb + (int64_t)k * MR;
{acc_fma}
  }}
  if constexpr (!LAST) {{
{acc_save}
    return;
  }}
  constexpr int TT = NVT * VL;  // positions of the whole vectors
  vf acc[MR][NV] = {{}};
{acc_array}
  if (RELU)
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NVT; ++v) acc[m][v] = acc[m][v] > 0 ? acc[m][v] : (vf){{}};
  const int h0 = p0 / WQ, w0 = p0 % WQ, hr = h0 - hb;
  if constexpr (NX > 0) {{  // the extra positions: p0 + TT + x, each a vector of MR filters
    vm ex[NX > 0 ? NX : 1];
{extra_array}
    for (int x = 0; x < NX; ++x) {{
      const int px = p0 + TT + x, h = px / WQ, w = px % WQ;
      if (w >= WO || px >= pl) continue;  // a padding column
      float e[MR];
      stm(e, RELU ? (ex[x] > 0 ? ex[x] : (vm){{}}) : ex[x]);
      for (int m = 0; m < MR; ++m)
        if (op[m]) op[m][(h - hb) * WO + w] = e[m];
    }}
  }}
  if (w0 + TT <= WO) {{
    for (int m = 0; m < MR; ++m)
      if (op[m])
        for (int v = 0; v < NVT; ++v) st(op[m] + hr * WO + w0 + v * VL, acc[m][v]);
    return;
  }}
  // (op[m] + (h - hb) * WO + w is output row h of filter slot m: hb is the first row op[m] holds.)
  // The tile crosses row ends, or the chunk's end pl: store each in-row segment, lanes j .. j + n - 1 of the tile at
  // h * WO + w (the Wq - WO lanes past a row end are the padding columns, dropped).  With AVX-512,
  // masked stores straight from the registers instead of a copy through a buffer: conv4b (every
  // tile crosses a row end) 0.94-0.99x the time, other C3D layers 0.98-1.03x (Zen 5, rotated-order
  // A/B).
#if !EG_MASKED_STORES
  float tmp[MR][T];
  std::memcpy(tmp, acc, sizeof tmp);
#endif
  for (int j = 0, h = hr, w = w0; j < TT && p0 + j < pl; ++h, w = 0) {{
    const int len = (WO - w < TT - j ? WO - w : TT - j);
    const int n = len < pl - (p0 + j) ? len : pl - (p0 + j);
    if (n > 0) {{
#if EG_MASKED_STORES
      for (int v = j / VL; v <= (j + n - 1) / VL; ++v) {{
        const int a = j > v * VL ? j - v * VL : 0, b = j + n < (v + 1) * VL ? j + n - v * VL : VL;
        const __mmask16 k = (__mmask16)(((1u << b) - 1) & ~((1u << a) - 1));
        for (int m = 0; m < MR; ++m)
          if (op[m]) _mm512_mask_storeu_ps(op[m] + h * WO + w - j + v * VL, k, (__m512)acc[m][v]);
      }}
#else
      for (int m = 0; m < MR; ++m)
        if (op[m]) std::memcpy(op[m] + h * WO + w, &tmp[m][j], n * sizeof(float));
#endif
    }}
    j += (WQ - w);
  }}
}}

static constexpr int tile_kind(int rem) {{  // NVT * 8 + NX of a chunk's last tile (cpu.tile_kind)
  if (rem > T) return NV * 8 + rem - T;
  const int q = rem / VL, r = rem % VL;
  if (r == 0) return q * 8;
  return q > 0 && r <= NXM ? q * 8 + r : (q + 1) * 8;
}}

// The tile at p0 of a chunk ending at pl: a whole tile, or the chunk's last (p0 + T + NXM >= pl):
// the vectors its positions need plus at most NXM extra positions (see NXM).
template <bool FIRST, bool LAST>
static inline int run_tile(const float* __restrict pk, const int32_t* __restrict ridx, int k0,
                           int k1, const float* __restrict wb, const float* bv, float* accbuf,
                           float* const* op, int p0, int pl, int hb) {{
  const int rem = pl - p0;
  if (rem > T + NXM) {{
    tile<FIRST, LAST, NV, 0>(pk, ridx, k0, k1, wb, bv, accbuf, op, p0, pl, hb);
    return T;
  }}
  switch (tile_kind(rem)) {{
{tile_cases}
    default:  // (not generated: a whole tile, stores clipped at pl; the loop goes on past it)
      tile<FIRST, LAST, NV, 0>(pk, ridx, k0, k1, wb, bv, accbuf, op, p0, pl, hb);
      return T;
  }}
  return rem;
}}

extern "C" void edgeguard_conv(const float* xin, float* x, const float* w, const float* bias,
                               float* out, int batch, int nthreads) {{
  // GEMM-style blocking.  One task = DGP output depth planes x one chunk of CT tiles of each x one
  // group of filter blocks.  Row slices are the outer loop, so one slice of the group's weights
  // (slice-major, sequential) stays in L2 while the task's tiles use it; each tile's kept input
  // rows of the slice are read (or packed once, PACK) and reused by every filter block of the
  // group.  The group's weights are read once per task.
  // Chunks: CT tiles (CH positions) of a plane, or, with a fused pool, RC output rows (whole
  // pooling windows; the rows and planes that floor pooling drops are not computed at all).
  constexpr int CH = CT * T, HC = HOP * PKH;
  constexpr int NCH = POOL ? (HC + RC - 1) / RC : (P + CH - 1) / CH;
  constexpr int DU = POOL ? DOP : DO;  // plane units: PKD planes each with a pool, else 1
  // Plane groups: where a chunk is a whole plane (layers with long chunks or few tiles), a task
  // takes as many planes as still leaves a task per thread, so the weights (past the L2 there)
  // are streamed fewer times: C3D's conv4b at 4x 0.90x the time with all 4 planes per task,
  // conv5a 0.89x (Zen 5, 2 threads).  Elsewhere one plane per task (no gain on conv2/conv3b).
  // The partial sums of a task's planes stay within 1 MB (an L2): past it, fewer planes per task.
  // (With a pool, the scratch of a task's unpooled rows counts too.)
  constexpr int64_t SCR_PLANE = POOL ? (int64_t)NBG * MR * RC * WO : 0;  // floats per plane
  constexpr int64_t PLANE_ACC_BYTES = ((int64_t)CT * NBG * TS + SCR_PLANE) * 4;
  int ndg = DU;
  if (NCH == 1)
    for (int k = 1; k <= DU; ++k)
      if (DU % k == 0 && (int64_t)k * FG * batch >= nthreads &&
          (DU / k) * PKD * PLANE_ACC_BYTES <= (1 << 20)) {{ ndg = k; break; }}
  const int dgp = DU / ndg * PKD;
#pragma omp parallel num_threads(nthreads)
  {{
    float* pk = PACK ? static_cast<float*>(std::aligned_alloc(64, (size_t)KC * T * 4)) : nullptr;
    float* bvall = new float[NB * MR];
    float** opall = new float*[(size_t)dgp * NB * MR];
    float* accbuf = static_cast<float*>(
        std::aligned_alloc(64, ((size_t)dgp * CT * NBG * TS * 4 + 63) / 64 * 64));
    float* scr = POOL ? new float[(size_t)dgp * SCR_PLANE] : nullptr;
    if (FUSE && xin) {{  // every thread takes this branch or none: a valid worksharing region
#pragma omp for collapse(3) schedule(static)
      for (int n = 0; n < batch; ++n)
        for (int c = 0; c < CIN; ++c)
          for (int d = 0; d < DI; ++d) {{
            const float* src = xin + (((int64_t)n * CIN + c) * DI + d) * HI * WI;
            float* dst = x + n * XN + (((int64_t)c * DQ + d + PD) * HQ + PH) * WQ + PW;
            for (int h = 0; h < HI; ++h)
              std::memcpy(dst + (int64_t)h * WQ, src + (int64_t)h * WI, WI * sizeof(float));
          }}
    }}  // the implicit barrier: the buffer is complete before any tile reads it
    // Tasks in (sample, plane group, chunk, filter group) order, handed out one at a time.  A
    // temporal kernel (kd x 1 x 1: an input row is read by kd planes and by no neighbouring
    // position) has its planes innermost instead, and each thread takes one run of consecutive
    // tasks, so the next plane's task finds two thirds of its input rows in the thread's L2:
    // R(2+1)D's 144 -> 64 temporal conv at 16 x 56 x 56, 3.6x KGS, 0.78x the time (AVX2 Zen 3,
    // 2 threads); 3 x 3 x 3 convs take 1.04-1.23x the time that way.
    const int ntasks = batch * ndg * NCH * FG;
    const int tchunk = PLANES_INNER ? (ntasks + nthreads - 1) / nthreads : 1;
#pragma omp for schedule(dynamic, tchunk)
    for (int task = 0; task < ntasks; ++task) {{
          const int g = task % FG, q = task / FG, n = q / (ndg * NCH);
          const int dg = PLANES_INNER ? q % ndg : q / NCH % ndg;
          const int c = PLANES_INNER ? q / ndg % NCH : q % NCH;
          const int d0 = dg * dgp;
          const int hb = POOL ? c * RC : 0, he = hb + RC < HC ? hb + RC : HC;  // pool: rows
          const int pbeg = POOL ? hb * WQ : c * CH;
          const int pend0 = POOL ? (he - 1) * WQ + WO : (c + 1) * CH;  // pool: no padding column
          const int pend = pend0 < P ? pend0 : P;
          const int b0 = BG[g], b1 = BG[g + 1];
          for (int i = b0 * MR; i < b1 * MR; ++i) {{  // once per task, not per (block, slice)
            const int f = FIL[i];
            bvall[i] = f >= 0 ? bias[f] : 0.f;
            for (int dd = 0; dd < dgp; ++dd)
              opall[(size_t)dd * NB * MR + i] =
                  f < 0 ? nullptr
                  : POOL ? scr + ((size_t)(i - b0 * MR) * dgp + dd) * RC * WO
                         : out + ((int64_t)(n * M + f) * DO + d0 + dd) * OPLANE;
          }}
          for (int s = 0; s < NS; ++s) {{
            const int r0 = s * KC, r1 = r0 + KC < KU ? r0 + KC : KU;
            const float* pks = pk - (int64_t)r0 * T;  // ridx are union indices
            for (int dd = 0; dd < dgp; ++dd)
            for (int p0 = pbeg, t = dd * CT, step = T; p0 < pend; p0 += step, ++t) {{
              const float* xb = x + n * XN + (int64_t)(d0 + dd) * XD;
              if (PACK)
                for (int r = r0; r < r1; ++r)
#pragma GCC unroll 8
                  for (int v = 0; v < NV; ++v)
                    st(pk + (r - r0) * T + v * VL, ld(xb + UROFF[r] + p0 + v * VL));
              const float* base = PACK ? pks : xb + p0;
              const int klo = KLO[d0 + dd], khi = KHI[d0 + dd];
              for (int b = b0; b < b1; ++b) {{
                const int32_t* ksb = KS + (b * NS + s) * (KD + 1);
                const int k0 = KB[b] + ksb[klo], k1 = KB[b] + ksb[khi];
                // weights are stored slice-major: one slice of every block is one sequential run
                const float* wb = w + ((int64_t)WOFF[b * NS + s] - KB[b] - ksb[0]) * MR;
                const float* bv = bvall + b * MR;
                float* const* op = opall + (size_t)dd * NB * MR + b * MR;
                float* ab = accbuf + ((size_t)t * NBG + b - b0) * TS;
                if (NS == 1) step = run_tile<true, true>(base, RIDX, k0, k1, wb, bv, ab, op, p0, pend, hb);
                else if (s == 0) step = run_tile<true, false>(base, RIDX, k0, k1, wb, bv, ab, op, p0, pend, hb);
                else if (s == NS - 1) step = run_tile<false, true>(base, RIDX, k0, k1, wb, bv, ab, op, p0, pend, hb);
                else step = run_tile<false, false>(base, RIDX, k0, k1, wb, bv, ab, op, p0, pend, hb);
              }}
            }}
          }}
          if (POOL)  // the task's windows are complete: pool its scratch into the output
            for (int i = b0 * MR; i < b1 * MR; ++i) {{
              const int f = FIL[i];
              if (f < 0) continue;
              for (int dp = 0; dp < dgp / PKD; ++dp)
                for (int hp = hb / PKH; hp < he / PKH; ++hp) {{
                  float row[WO];  // the max over the window's planes and rows, then over columns
                  const float* sp = scr + ((size_t)(i - b0 * MR) * dgp + dp * PKD) * RC * WO
                                    + (int64_t)(hp * PKH - hb) * WO;
                  for (int q = 0; q < WO; ++q) row[q] = sp[q];
                  for (int a = 0; a < PKD; ++a)
                    for (int e = 0; e < PKH; ++e) {{
                      const float* sr = sp + ((size_t)a * RC + e) * WO;
                      for (int q = 0; q < WO; ++q) row[q] = sr[q] > row[q] ? sr[q] : row[q];
                    }}
                  float* o = out + (((int64_t)(n * M + f) * DOP + d0 / PKD + dp) * HOP + hp) * WOP;
                  for (int q = 0; q < WOP; ++q) {{
                    float mx = row[q * PKW];
                    for (int e = 1; e < PKW; ++e) mx = row[q * PKW + e] > mx ? row[q * PKW + e] : mx;
                    o[q] = mx;
                  }}
                }}
            }}
        }}
    std::free(pk);
    delete[] scr;
    std::free(accbuf);
    delete[] bvall;
    delete[] opall;
  }}
}}
"""


def _temporal(g) -> bool:
    """A temporal kernel (``kd x 1 x 1``, kd > 1): its tasks take the planes innermost."""
    return g.kernel[0] > 1 and g.kernel[1] == g.kernel[2] == 1


def _pool_rows(kh: int, ho: int, wq: int, t: int, row_bytes: int) -> int:
    """Output rows per chunk of a layer with a fused pool of ``kh`` rows: a multiple of ``kh``
    whose chunk wastes the fewest positions in its last, partly used tile (``wq`` positions a row,
    ``t`` a tile), the fewest rows among equals, with the chunk's scratch (``row_bytes`` a row)
    within 1 MB.  E.g. C3D's conv2 at 3.6x (rows of 57 positions, 24-position tiles, 2 planes):
    8 rows (456 positions in 19 tiles, 458 KB of scratch) take 0.93x the time of 4 rows (228 in
    10 tiles: 5 % wasted) and the same as 16; conv1: 4 rows (452 in 19) 0.86x the time of 2 rows
    (226 in 10), the same as 8 or 24 (AVX2 Zen 3, 2 threads)."""
    hc = ho // kh * kh
    best, best_cost = kh, None
    for rc in range(kh, hc + 1, kh):
        if rc > kh and rc * row_bytes > 1 << 20:
            break
        cost = -(-(rc * wq) // t) * t / (rc * wq)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = rc, cost
    return best


def _register_tile(mr: int, nv: int, nxm: int = 0) -> dict[str, str]:
    """The ``mr x nv`` register tile of :func:`tile`, unrolled into named accumulators
    ``a{m}_{v}`` (filter m, vector v) and ``e{x}`` (extra position x, the ``mr`` filters): their
    initial load, the per-row FMAs, the save of partial sums and the arrays the store path reads.
    Vector ``v`` exists where ``v < NVT``, extra ``x`` where ``x < NX`` (template constants)."""
    acc = [[f"a{m}_{v}" for v in range(nv)] for m in range(mr)]
    off = lambda m, v: f"accbuf + {(m * nv + v)} * VL"  # noqa: E731
    init = [
        f"  vf {acc[m][v]}; if constexpr ({v} < NVT) "
        f"{acc[m][v]} = FIRST ? (vf){{}} + bv[{m}] : ld({off(m, v)});"
        for m in range(mr) for v in range(nv)
    ]  # fmt: skip
    init += [f"  vm e{x}; if constexpr ({x} < NX) e{x} = FIRST ? ldm(bv) : ldm(accbuf + MR * T + {x} * MR);"
             for x in range(nxm)]  # fmt: skip
    fma = [f"    vf x{v}; if constexpr ({v} < NVT) x{v} = ld(xr + {v} * VL);" for v in range(nv)]
    for m in range(mr):
        fma.append(f"    {{ const float s = wk[{m}]; " + " ".join(
            f"if constexpr ({v} < NVT) {acc[m][v]} += x{v} * s;" for v in range(nv)) + " }")  # fmt: skip
    if nxm:
        fma.append("    if constexpr (NX > 0) {")
        fma.append("      const vm wv = ldm(wk);")
        fma += [
            f"      if constexpr ({x} < NX) e{x} += wv * xr[NVT * VL + {x}];" for x in range(nxm)
        ]
        fma.append("    }")
    save = [f"    if constexpr ({v} < NVT) st({off(m, v)}, {acc[m][v]});"
            for m in range(mr) for v in range(nv)]  # fmt: skip
    save += [
        f"    if constexpr ({x} < NX) stm(accbuf + MR * T + {x} * MR, e{x});" for x in range(nxm)
    ]
    array = [f"  if constexpr ({v} < NVT) acc[{m}][{v}] = {acc[m][v]};"
             for m in range(mr) for v in range(nv)]  # fmt: skip
    extra = [f"    if constexpr ({x} < NX) ex[{x}] = e{x};" for x in range(nxm)]
    return {"acc_init": "\n".join(init), "acc_fma": "\n".join(fma), "acc_save": "\n".join(save),
            "acc_array": "\n".join(array), "extra_array": "\n".join(extra)}  # fmt: skip


def tile_kind(rem: int, nv: int, vl: int, nxm: int) -> tuple[int, int]:
    """``(vectors, extra positions)`` of a chunk's last tile with ``rem`` positions left (at most
    ``nv * vl + nxm``): whole vectors, and a remainder of at most ``nxm`` positions as extras
    rather than one more vector (mirrored by the kernel's ``tile_kind``)."""
    t = nv * vl
    if rem > t:
        return nv, rem - t
    q, r = divmod(rem, vl)
    if r == 0:
        return q, 0
    return (q, r) if q > 0 and r <= nxm else (q + 1, 0)


def _last_tiles(layout: InputLayout, tflat: int, ct: int, rc: int, hc: int | None, nxm: int) -> set:
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


def _chunking(
    tiles_plane: int, planes: int, blocks: int, ct: int | None, fg: int | None,
    weight_bytes: int = 0,
) -> tuple[int, int]:  # fmt: skip
    """Tiles per task (CT) and filter-block groups (FG); ``None`` picks the default.

    Every chunk reads the group's kept weights once.  Default: chunks of up to 4 tiles, fewer where
    a sample has under 128 tiles (>= 32 tasks per sample balance the threads), one group.  Layers
    whose kept weights pass ``LONG_CHUNK_BYTES`` (4 MB, past the L2) get chunks of up to 16 tiles
    in 2 filter groups instead, so the weights stream from L3/DRAM several times less often:
    C3D's conv4a and conv4b at 2x (7 and 14 MB) take 0.90x the time (Zen 5, 2 threads); below
    that size the default shape is as fast (conv3b at 4x, 1.8 MB: 0.98-1.00x)."""
    long = weight_bytes > LONG_CHUNK_BYTES
    if ct is None:
        ct = min(16, tiles_plane) if long else max(1, min(4, tiles_plane * planes // 32))
    if fg is None:
        fg = 2 if long else 1
    return max(1, min(ct, tiles_plane)), max(1, min(fg, blocks))


LONG_CHUNK_BYTES = 4 << 20


def generate_source(
    plan: SparsePlan, layout: InputLayout, nv: int, vl: int, relu: bool, name: str = "conv",
    ct: int | None = None, kc: int | None = None, gn: int = 4, pf: int | None = None,
    fg: int | None = None, pack: bool = False, pool: tuple[int, int, int] = (1, 1, 1),
) -> tuple[str, torch.Tensor]:  # fmt: skip
    """C++ source of one layer's kernel for one input size, and the order (indices into the plan's
    concatenated panels) in which the kernel expects the weight rows.  ``ct`` (tiles per task) and
    ``fg`` (filter-block groups): see :func:`_chunking`; ``kc``: rows per slice (default
    :func:`default_slice_rows`); ``pf``: prefetch distance in rows (default
    :func:`default_prefetch`); ``pack``: copy each tile's kept rows into a contiguous buffer
    first (the older scheme) instead of reading them where they lie in the input buffer (the
    default: 0.76-0.96x the time of packing on C3D's conv1-conv5a at 4x and 2 threads, Zen 5, and
    0.96-0.99x with 8-float vectors; the rows of one tile overlap, kw shifts by one float, so
    reading in place touches a third of the cache lines the copy writes).  ``pool``: a fused max
    pool ``(kd, kh, kw)`` (stride = window, no padding, floor) applied after the activation;
    ``(1, 1, 1)``: none."""
    nb = len(plan.block_rows)
    start = [0]
    for rows in plan.block_rows:
        start.append(start[-1] + len(rows))
    do, ho, wo = layout.out
    tiles_plane = -(-layout.positions // (nv * vl))
    kept = sum(len(rows) for rows in plan.block_rows) * plan.mr * 4
    ct, fg = _chunking(tiles_plane, do, nb, ct, fg, kept)
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
            rc = _pool_rows(pool[1], ho, layout.phased[2], nv * vl, row_bytes)
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
    temporal = _temporal(plan.geometry)  # planes innermost; unpacked, also its slices and prefetch
    kc = kc or default_slice_rows(vl, 0 if pack else tiles_plane, temporal and not pack)
    pf = default_prefetch(vl, kc, temporal and not pack) if pf is None else pf
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
    rows_at = ridx * nv * vl if pack else uroff[ridx]
    # Extra positions (see NXM): with AVX-512's 32 registers only, and rows read in place.
    nxm = 2 if vl >= 16 and not pack else 0
    hc = ho // pool[1] * pool[1] if pool != (1, 1, 1) else None
    cases = []
    for nvt, nx in sorted(
        {tile_kind(r, nv, vl, nxm) for r in _last_tiles(layout, nv * vl, ct, rc, hc, nxm)}
    ):
        cases.append(f"    case {nvt * 8 + nx}: tile<FIRST, LAST, {nvt}, {nx}>"
                     "(pk, ridx, k0, k1, wb, bv, accbuf, op, p0, pl, hb); break;")  # fmt: skip
    source = KERNEL_TEMPLATE.format(
        name=name, vl=vl, mr=plan.mr, nv=nv, ct=ct, fg=fg, nbg=max(1, -(-nb // fg)), nb=nb,
        m=plan.geometry.out_channels, do_=do, ho=ho, wo=wo, wq=wq, p=layout.positions,
        xn=layout.batch_stride, xd=hq * wq, relu="true" if relu else "false",
        kb=_fmt_ints(kb), ku=len(union), uroff=_fmt_ints(uroff.tolist()),
        pack="true" if pack else "false", ridx=_fmt_ints(rows_at.tolist() + [0] * pf), kc=kc, pf=pf, ns=ns, ks=_fmt_ints(kds.flatten().tolist()),
        kd=KD, klo=_fmt_ints(klo), khi=_fmt_ints(khi),
        woff=_fmt_ints(woff.flatten().tolist()), fil=_fmt_ints(filters.tolist()), bg=_fmt_ints(bg),
        fuse="true" if layout.phases == 1 else "false", **_register_tile(plan.mr, nv, nxm), nxm=nxm, tile_cases="\n".join(cases), cin=plan.geometry.in_channels,
        di=layout.size[0], hi=layout.size[1], wi=layout.size[2], pd=plan.geometry.padding[0],
        ph=plan.geometry.padding[1], pw=plan.geometry.padding[2], dq=dq, hq=hq,
        pkd=pool[0], pkh=pool[1], pkw=pool[2], rc=rc,
        planes_inner="true" if temporal else "false",
    )  # fmt: skip
    return source, torch.tensor(order, dtype=torch.int64)


KEY_SYMBOL = "edgeguard_kernel_key"
STALE_BUILD_SECONDS = 3600  # a .build-* folder older than this is a crashed build's leftover


def cache_dir() -> Path:
    """The kernel cache (``$EDGEGUARD_CACHE`` or ``~/.cache/edgeguard/kernels``); a path that is
    not a folder is an error."""
    root = Path(
        os.environ.get("EDGEGUARD_CACHE") or Path.home() / ".cache" / "edgeguard" / "kernels"
    )
    if root.exists() and not root.is_dir():
        raise CompileError(f"the kernel cache {root} (EDGEGUARD_CACHE) is not a folder; point "
                           "EDGEGUARD_CACHE at a folder of your own")  # fmt: skip
    return root


def check_private(path: Path) -> None:
    """Refuse a cache folder or file that another user owns or may write: a library planted there
    would run its code when loaded."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CompileError(f"refusing to use the kernel cache {path}: it belongs to another user "
                           f"(uid {st.st_uid}); set EDGEGUARD_CACHE to a folder of your own")  # fmt: skip
    if st.st_mode & 0o022:
        raise CompileError(f"refusing to use the kernel cache {path}: it is writable by other users "
                           f"(mode {st.st_mode & 0o777:o}); run chmod go-w on it or set "
                           "EDGEGUARD_CACHE to a private folder")  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_key(source: str, target: Target) -> str:
    return hashlib.sha256((target.key + "\n" + source).encode()).hexdigest()[:24]


def entry_dir(source: str, target: Target) -> Path:
    return cache_dir() / _entry_key(source, target)


KEY_MARK = "edgeguard-kernel-key:"


def _stamped(source: str, key: str) -> str:
    """The source as compiled: it also holds and returns its cache key, so a library moved or
    copied into another entry is recognised before it is loaded (and checked again after)."""
    return source + (f'\nextern "C" const char* {KEY_SYMBOL}(void) '
                     f'{{ return "{KEY_MARK}{key}"; }}\n')  # fmt: skip


def _keys_in(lib: Path) -> set[str]:
    """The cache keys compiled into ``lib``, read from its bytes without loading it."""
    return {
        m.decode() for m in re.findall(KEY_MARK.encode() + rb"([0-9a-f]{24})", lib.read_bytes())
    }


def load_library(lib: Path) -> ctypes.CDLL:
    """Load a cached kernel library after checking that its folder and file are private and that
    the key compiled into it is its entry's key (the folder name), first in its bytes (nothing
    foreign is ever loaded) and then through its key function.  Raises :class:`CompileError` when
    the cache is not private and ``OSError`` when the library is not the entry's."""
    lib = Path(lib)
    for path in (lib.parent.parent, lib.parent, lib):
        check_private(path)
    keys = _keys_in(lib)
    if keys != {lib.parent.name}:
        found = ", ".join(sorted(keys)) or "no key (not an edgeguard kernel of this version)"
        raise OSError(f"{lib} was built for cache entry {found}, not {lib.parent.name}")
    handle = ctypes.CDLL(str(lib))
    fn = getattr(handle, KEY_SYMBOL)
    fn.restype = ctypes.c_char_p
    if fn().decode() != KEY_MARK + lib.parent.name:
        raise OSError(f"{lib} does not return its cache entry's key")
    return handle


def _valid(entry: Path) -> bool:
    lib, digest = entry / "kernel.so", entry / "kernel.so.sha256"
    if not (lib.exists() and digest.exists()):
        return False
    if _sha256(lib) != digest.read_text().strip():
        log.warning("kernel cache entry %s is corrupted (checksum mismatch): rebuilding", entry)
        return False
    try:
        load_library(lib)
    except OSError as err:
        log.warning("kernel cache entry %s cannot be used (%s): rebuilding", entry, err)
        return False
    return True


def build_many(sources: list[str], target: Target) -> list[Path]:
    """Compile every source not already cached (in parallel, with ninja when it is installed) and
    return the path of each shared library; every returned library has been loaded and checked."""
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(root)
    entries = [entry_dir(s, target) for s in sources]
    todo = {}
    for src, entry in zip(sources, entries, strict=True):
        if not _valid(entry):
            todo[entry] = src
    if todo:
        _compile(todo, target)
        for entry in todo:
            load_library(entry / "kernel.so")  # a fresh build that fails its check is a bug
    return [e / "kernel.so" for e in entries]


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for old in root.glob(".build-*"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(old)


def _replace_atomically(data_from: Path | str, dest: Path, text: str | None = None) -> None:
    """Write a copy of ``data_from`` (or ``text``) beside ``dest`` under a name unique to this
    process and call, then rename it over ``dest``: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        if text is None:
            shutil.copyfile(data_from, tmp)
        else:
            Path(tmp).write_text(text)
        os.chmod(tmp, 0o644 if text is not None else 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _compile(todo: dict[Path, str], target: Target) -> None:
    if shutil.which(target.cxx) is None:
        raise CompilerUnavailable(f"C++ compiler {target.cxx!r} not found")
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale_builds(root)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        tmpd = Path(tmp)
        rules = [
            "rule cxx",
            f"  command = {target.cxx} {' '.join(target.flags)} $in -o $out",
            "  description = CXX $out",
        ]
        for i, (entry, src) in enumerate(todo.items()):
            (tmpd / f"k{i}.cpp").write_text(_stamped(src, entry.name))
            rules.append(f"build k{i}.so: cxx k{i}.cpp")
        (tmpd / "build.ninja").write_text("\n".join(rules) + "\n")
        jobs = str(max(1, os.cpu_count() or 1))
        if shutil.which("ninja"):
            cmd = ["ninja", "-C", str(tmpd), "-j", jobs]
        else:  # still correct without ninja, only serial
            cmd = ["sh", "-c", " && ".join(
                f"{target.cxx} {' '.join(target.flags)} {tmpd}/k{i}.cpp -o {tmpd}/k{i}.so"
                for i in range(len(todo)))]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise CompilerUnavailable(
                f"kernel compilation failed ({' '.join(cmd[:2])}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
            )
        for i, (entry, src) in enumerate(todo.items()):
            entry.mkdir(mode=0o755, parents=True, exist_ok=True)
            _replace_atomically("", entry / "kernel.cpp", text=src)
            _replace_atomically(tmpd / f"k{i}.so", entry / "kernel.so")
            _replace_atomically("", entry / "kernel.so.sha256", text=_sha256(entry / "kernel.so"))


class CppKernel:
    """A loaded layer kernel with its weight panel in kernel order:
    ``kernel(xbuf, bias, out, batch, xin=None)``."""

    def __init__(self, lib: Path, panel: torch.Tensor) -> None:
        self.panel = panel.contiguous()
        self._lib = load_library(lib)
        self._fn = self._lib.edgeguard_conv
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_int]

    def __call__(
        self, x: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, batch: int,
        xin: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """``x``: the padded input buffer; ``xin``: the raw contiguous input ``[N, C, D, H, W]``,
        which a stride-1 kernel copies into ``x`` itself first (``None``: ``x`` is already filled)."""
        threads = torch.get_num_threads()
        self._fn(
            xin.data_ptr() if xin is not None else None, x.data_ptr(), self.panel.data_ptr(),
            bias.data_ptr(), out.data_ptr(), batch, threads,
        )  # fmt: skip


# -- cross compilation (phones): a standalone program around one generated kernel -----------------

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
static std::vector<float> read_floats(const char* path, long n) {
  std::vector<float> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(float), n, f) != (size_t)n) { std::perror(path); std::exit(2); }
  std::fclose(f);
  return v;
}
// usage: prog x.bin nx w.bin nw bias.bin nbias out.bin nout batch threads
int main(int argc, char** argv) {
  if (argc != 11) { std::fprintf(stderr, "bad arguments\n"); return 2; }
  auto x = read_floats(argv[1], std::atol(argv[2]));
  auto w = read_floats(argv[3], std::atol(argv[4]));
  auto b = read_floats(argv[5], std::atol(argv[6]));
  std::vector<float> out(std::atol(argv[8]));
  edgeguard_conv(nullptr, x.data(), w.data(), b.data(), out.data(), std::atoi(argv[9]),
                 std::atoi(argv[10]));
  FILE* f = std::fopen(argv[7], "wb");
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
"""


def cross_target(cxx: str = "aarch64-linux-gnu-g++", vector_floats: int = 4) -> Target:
    """An aarch64 (ARMv8-A NEON, every 64-bit phone) target for Debian's cross compiler; programs are
    linked statically so that ``qemu-aarch64`` runs them without a sysroot."""
    if shutil.which(cxx) is None:
        raise CompilerUnavailable(
            f"cross compiler {cxx!r} not found (apt install g++-aarch64-linux-gnu)"
        )
    flags = ("-O3", "-march=armv8-a", "-fopenmp", "-std=c++17", "-ffp-contract=fast", "-static")
    return Target(cxx, flags, vector_floats)


def build_standalone(source: str, target: Target, out: Path) -> Path:
    """Compile ``source`` + a file-in/file-out ``main`` into the executable ``out``."""
    out = Path(out)
    src = out.with_suffix(".cpp")
    src.write_text(source + HARNESS)
    res = subprocess.run([target.cxx, *target.flags, str(src), "-o", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        raise CompilerUnavailable(f"cross compilation failed:\n{res.stderr[-3000:]}")
    return out
