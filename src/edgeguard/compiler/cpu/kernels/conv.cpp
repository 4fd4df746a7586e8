// edgeguard CPU sparse convolution kernel, one per layer and input size.
//
// edgeguard.compiler.cpu.codegen writes the layer's header (its shapes as constexpr, its sparsity
// pattern as constant tables, its register tile unrolled into macros) in place of the include of
// eg_layer.h below; everything else is this file, compiled as it is.
//
// Constants from the header:
//   VL: floats per SIMD vector.  MR x NV: the register tile (filters x vectors of positions),
//   T = NV * VL positions.  CT: tiles per task; FG: filter-block groups (NBG blocks at most each).
//   NXM: a chunk's last tile computes only the vectors its positions need, and up to NXM positions
//   past its last whole vector as "extra" positions: one MR-float accumulator each (the block's
//   filters), the input value broadcast; TS: floats of one tile's partial sums.
//   NB: filter blocks; M: filters; DO x HO x WO: output; WQ: a buffer row; P: positions per plane.
//   XN, XD: buffer strides of a sample and a plane.  RELU: ReLU fused (a leaky one of slope
//   SLOPE where SLOPE != 0).  FV: filter-vectorised
//   tiles (fv_tile: one vector of MR filters per output position; small planes), which read the
//   output position q = h * WO + w of a row at FV_POFF[q] and run the tiles of EG_FV_CASES.
//   CAPPED, CAP: the ReLU capped at CAP (ReLU6).
//   RES: a residual res [N, M, DO, HO, WO] (the output's shape) is added before the ReLU, as each
//   tile stores its outputs; it is read in the output's layout, its planes RPL floats apart where
//   RPL > 0 (a wide residual written into another layer's padded buffer).
//   PFILL (= !FUSE, defined below): a strided kernel splits the raw input into its padded phase
//   buffer itself (phase (a, b, e) of strides SD x SH x SW holds
//   x[i * SD + a - PD][j * SH + b - PH][k * SW + e - PW]).
//   FUSE: the kernel copies the raw input [N, CIN, DI, HI, WI] into the padded buffer itself
//   (stride 1 on every axis: no phase split), by the same threads, before computing; it reads
//   element (n, c, d, h, w) at n * XS0 + c * XS1 + d * XS2 + h * XS3 + w * XS4 (a subsample of a
//   layer's input, XS4 > 1, is gathered straight from that input; a batch-last kernel's
//   transpose of it, phases too, by bl_fill).
//   PKD x PKH x PKW: fused max pooling (stride = window, no padding, floor; 1 x 1 x 1: none): a task
//   computes whole windows (RC output rows of PKD planes) into its own scratch and writes only the
//   pooled output, so the unpooled activations never reach memory.
//   BLN: a batch-last kernel (BLN = the batch N > 0; its output out is [1, M, H, W, N]; tasks
//   of whole planes, tuning.chunking) then transposes out into tout [N, M, H, W] itself,
//   adding tres [N, M, H, W] first (BLRES) and applying the ReLU after that sum (BLRELU); 0:
//   out is the output.
//   PLANES_INNER: tasks take the planes innermost (temporal kernels, kd x 1 x 1).
//   RA: row-aligned tiles (codegen.row_aligned): a plane's tiles number its HO * WO output
//   positions (no padding column), vector v of a tile reads at VOFF[v] from the tile's first
//   position, and a tile is stored as whole vectors (clipped at the chunk's end); else VOFF[v] is
//   v * VL.  NT: whole aligned output vectors are stored with streaming stores (large outputs).
//   MC: masked columns (InputLayout.masked_columns; AVX-512): the buffer's rows hold no width
//   padding (WQ = WO), a row's input is read MCS floats before its RIDX offset and with the
//   lane mask RMK[k] (its kernel column's: lanes whose input column lies outside the row read 0).
//   PACK: false (default): each kept row is read where it lies in the input buffer and RIDX holds
//   its offset there; true: rows are first copied into a packed tile and RIDX holds union row * T.
//   KC, NS: the union rows are cut into NS slices of KC rows; KD: kernel depth; PF: rows ahead
//   whose input lines are prefetched.
// Tables from the header:
//   KB[NB + 1]: start of each block's kept rows.  UROFF[KU]: the union of the rows any block
//   keeps, as input-buffer offsets.  RIDX: each block row's offset (+ PF zeros: prefetch indices
//   past a block's end stay inside the table), of type ridx_t: 16 bits where every offset fits
//   (a kernel whose weights stream from memory reads 4.5 bytes a kept weight with 32-bit
//   offsets, 4.25 with 16).  FIL[NB * MR]: the filter each block slot writes
//   (-1: none).  BG[FG + 1]: block groups.  KS[(b * NS + s) * (KD + 1) + j]: where block b's rows
//   of slice s with kd >= j start (rows are ordered kd first; j = KD: the slice's end).
//   KLO[DO], KHI[DO]: output plane d reads real input (not depth padding) only for kd in
//   [KLO[d], KHI[d]); the other rows multiply zeros and are skipped.  WOFF[NB * NS]: weight offset
//   of each (block, slice).  TILE_KIND[T + NXM + 1]: NVT * 8 + NX of a chunk's last tile with
//   that many positions left (computed by codegen.tile_kind, the one definition).
// Macros from the header: EG_ACC_INIT, EG_ACC_FMA, EG_ACC_SAVE, EG_ACC_ARRAY, EG_EXTRA_ARRAY (the
// unrolled MR x NV register tile) and EG_TILE_CASES (the last-tile shapes this layer needs).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "eg_layer.h"
#include <omp.h>

#if defined(__AVX512F__) && VL == 16
#define EG_MASKED_STORES 1  // tiles crossing row ends are stored with masked stores (tile())
#else
#define EG_MASKED_STORES 0
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
static inline vf ld(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// One input vector of a kept row: MC masks the lanes its kernel column puts outside the row.
static inline vf ldx(const float* p, [[maybe_unused]] uint32_t km) {
#if EG_MASKED_STORES
  if constexpr (MC) return (vf)_mm512_maskz_loadu_ps((__mmask16)km, p);
#endif
  static_assert(!MC || VL == 16, "masked columns need AVX-512");
  return ld(p);
}
typedef float vm __attribute__((vector_size(MR * 4)));
static inline vm ldm(const float* p) { vm v; std::memcpy(&v, p, sizeof v); return v; }
static inline void stm(float* p, vm v) { std::memcpy(p, &v, sizeof v); }
typedef int32_t vi __attribute__((vector_size(VL * 4)));
// ZJ (a wide output written into its reader's padded buffer): the lanes of positions past a row
// end or past the plane's last one are that buffer's padding, stored as zero (JMV[p]: all ones
// for a real output position p, else 0; a bitwise and, so that NaN turns to zero too).
static inline vf keep_real(vf v, int64_t p) {
  if constexpr (!ZJ) return v;
  vi bits, mask;
  std::memcpy(&bits, &v, sizeof v);
  std::memcpy(&mask, JMV + p, sizeof mask);
  bits &= mask;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// A whole vector of the output: with NT (outputs past the caches' reach), an aligned one is
// streamed to memory, so its line is not first read for ownership.
static inline void st_out(float* p, vf v) {
#if EG_MASKED_STORES
  if (NT && ((uintptr_t)p & 63) == 0) {
    _mm512_stream_ps(p, (__m512)v);
    return;
  }
#endif
  st(p, v);
}

// the fused activation, on a float or a vector: ReLU, or with SLOPE != 0 a leaky ReLU, capped at
// CAP where CAPPED (ReLU6)
template <class V>
static inline V lrelu(V v) {
  V r = v > 0 ? v : (SLOPE == 0.f ? V{} : v * SLOPE);
  if constexpr (CAPPED) r = r < CAP ? r : V{} + CAP;
  return r;
}
// the activation after a residual sum (RES): lrelu, or nothing (RELU false)
template <class V>
static inline V act(V v) {
  return RELU ? lrelu(v) : v;
}

// Where tasks are handed out dynamically (a batch smaller than the threads), in runs: a task of a
// few us cost more to dispatch one at a time than to compute, and 8 runs per thread still
// balance the threads.
static inline int task_run(int ntasks, int nthreads) {
  return ntasks / (8 * nthreads) > 1 ? ntasks / (8 * nthreads) : 1;
}

constexpr int T = NV * VL, TS = MR * T + NXM * MR;
constexpr bool PFILL = !FUSE;  // a strided kernel fills its phase buffer itself
constexpr int64_t OPLANE = WIDE ? OPS : (int64_t)HO * WO;  // floats from one output plane to the next
constexpr int64_t RPLANE = RPL > 0 ? RPL : OPLANE;  // the residual's (a wide one's may differ)
constexpr int64_t OUT_BYTES = (int64_t)M * DO * OPLANE * 4;  // a sample's output
constexpr bool POOL = PKD * PKH * PKW > 1;
constexpr int DOP = DO / PKD, HOP = HO / PKH, WOP = WO / PKW;
static_assert(BLN == 0 || BLN == WO, "a batch-last output's width is the batch");

// Kept weights prefetched this many rows (4 KB) ahead, in filter-vectorised tiles always and in
// tile() where a call has fewer samples than threads: its tiles then stream each block's
// weights (one sequential run, the next block's after it) about once, from DRAM where the
// model's weights outgrow the caches.  With more
// samples the weights are read from L2 sample after sample, where the prefetches only cost issue
// slots.
constexpr int WPF = 128;

template <bool FIRST, bool LAST, int NVT, int NX>
static inline void tile(const float* __restrict pk, const ridx_t* __restrict ridx, int k0, int k1,
                        const float* __restrict wb, const float* bv, float* accbuf,
                        float* const* op, const float* const* rp, int p0, int pl, int hb,
                        bool wpf) {
  // The accumulators are named variables (generated for MR x NV), not an array: GCC kept an
  // array in memory at every call's entry and exit.
  EG_ACC_INIT
  if constexpr (LAST && (RES || (!NT && BLN == 0))) {
    // The lines this tile's stores read (a fused residual's, written two layers before) or
    // write (the output's, a pool buffer last written a layer or more before), fetched while its
    // rows are computed: out of the caches by then at large batches, and at batch 1 after other
    // work (a dense model's call) where a sample's output fits an L2 (larger ones, written
    // past the caches anyway, were slower with it).  Not where the output is streamed (NT) or
    // a batch-last kernel's intermediate.
    const int64_t o0 = RA || WIDE ? p0 : (int64_t)(p0 / WQ - hb) * WO + p0 % WQ;
    for (int m = 0; m < MR; ++m)
      if (RES ? rp[m] != nullptr : op[m] != nullptr && (!wpf || OUT_BYTES <= (1 << 20)))
        for (int v = 0; v < NVT; ++v) {
          if constexpr (RES) __builtin_prefetch(rp[m] + o0 + v * VL);
          else __builtin_prefetch(op[m] + o0 + v * VL, 1);
        }
  }
  // One kept row: its input prefetched PF rows ahead (the rows are a gather the hardware
  // prefetcher cannot guess), the weights WPF rows ahead where WP (see WPF), the FMAs.  The loop
  // is written twice, with and without WP, so that neither tests wpf row after row.
#define EG_TILE_ROW(WP)                                                                  \
  /* RIDX holds the row's offset from pk: no multiply */                                 \
  const float* xr = pk + ridx[k] - MCS;                                                  \
  [[maybe_unused]] const uint32_t km = MC ? RMK[k] : 0xFFFFu;                            \
  if (PF > 0) {                                                                          \
    const float* nx = pk + ridx[k + PF];                                                 \
    if (RA) {                                                                            \
      for (int v = 0; v < NV; ++v) { /* each vector, which may straddle two lines */    \
        __builtin_prefetch(nx + VOFF[v]);                                                \
        __builtin_prefetch(nx + VOFF[v] + VL - 1);                                       \
      }                                                                                  \
    } else {                                                                             \
      _Pragma("GCC unroll 8") for (int o = 0; o < T; o += 16)                            \
          __builtin_prefetch(nx + o); /* every line */                                   \
      __builtin_prefetch(nx + T + 1);                                                    \
    }                                                                                    \
  }                                                                                      \
  const float* wk = wb + (int64_t)k * MR;                                                \
  if (WP) __builtin_prefetch(wk + WPF * MR);                                             \
  EG_ACC_FMA
  if (wpf) {
#pragma GCC unroll 2
    for (int k = k0; k < k1; ++k) {
      EG_TILE_ROW(true)
    }
  } else {
#pragma GCC unroll 2
    for (int k = k0; k < k1; ++k) {
      EG_TILE_ROW(false)
    }
  }
#undef EG_TILE_ROW
  if constexpr (!LAST) {
    EG_ACC_SAVE
    return;
  }
  constexpr int TT = NVT * VL;  // positions of the whole vectors
  vf acc[MR][NV] = {};
  EG_ACC_ARRAY
  if (RELU && !RES)  // with a residual: after adding it, at the stores
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NVT; ++v) acc[m][v] = lrelu(acc[m][v]);
  // RA: p0 is an output index, the tile's vectors whole rows' pieces; WIDE: position p of the
  // plane is stored at p.  Either way whole vectors (clipped at pl), and (WIDE only: RA tiles
  // have none) the extra positions one by one.
  if constexpr (RA || WIDE) {
    if constexpr (NX > 0) {
      vm ex[NX > 0 ? NX : 1];
      EG_EXTRA_ARRAY
      for (int x = 0; x < NX && p0 + TT + x < pl; ++x) {
        float e[MR];
        stm(e, RELU && !RES ? lrelu(ex[x]) : ex[x]);
        for (int m = 0; m < MR; ++m)
          if (op[m])
            op[m][p0 + TT + x] = ZJ && !JMV[p0 + TT + x] ? 0.f
                                 : RES                   ? act(e[m] + rp[m][p0 + TT + x])
                                                         : e[m];
      }
    }
    for (int m = 0; m < MR; ++m)
      if (op[m])
        for (int v = 0; v < NVT && p0 + v * VL < pl; ++v) {
          const int64_t o = p0 + v * VL;
          st_out(op[m] + o, keep_real(RES ? act(acc[m][v] + ld(rp[m] + o)) : acc[m][v], o));
        }
    return;
  }
  const int h0 = p0 / WQ, w0 = p0 % WQ, hr = h0 - hb;
  if constexpr (NX > 0) {  // the extra positions: p0 + TT + x, each a vector of MR filters
    vm ex[NX > 0 ? NX : 1];
    EG_EXTRA_ARRAY
    for (int x = 0; x < NX; ++x) {
      const int px = p0 + TT + x, h = px / WQ, w = px % WQ;
      if (w >= WO || px >= pl) continue;  // a padding column
      float e[MR];
      stm(e, RELU && !RES ? lrelu(ex[x]) : ex[x]);
      for (int m = 0; m < MR; ++m)
        if (op[m]) op[m][(h - hb) * WO + w] = RES ? act(e[m] + rp[m][(h - hb) * WO + w]) : e[m];
    }
  }
  // Rows without padding columns (WQ == WO) are contiguous in the output too: a tile that crosses
  // a row end is still one run of positions there.
  if (WQ == WO ? p0 + TT <= pl : w0 + TT <= WO) {
    for (int m = 0; m < MR; ++m)
      if (op[m])
        for (int v = 0; v < NVT; ++v) {
          const int64_t o = hr * WO + w0 + v * VL;
          st_out(op[m] + o, RES ? act(acc[m][v] + ld(rp[m] + o)) : acc[m][v]);
        }
    return;
  }
  // (op[m] + (h - hb) * WO + w is output row h of filter slot m: hb is the first row op[m] holds.)
  // The tile crosses row ends, or the chunk's end pl: store each in-row segment, lanes j .. j + n - 1
  // of the tile at h * WO + w (the WQ - WO lanes past a row end are the padding columns, dropped).
  // With AVX-512, masked stores straight from the registers instead of a copy through a buffer.
#if !EG_MASKED_STORES
  float tmp[MR][T];
  std::memcpy(tmp, acc, sizeof tmp);
#endif
  for (int j = 0, h = hr, w = w0; j < TT && p0 + j < pl; ++h, w = 0) {
    const int len = (WO - w < TT - j ? WO - w : TT - j);
    const int n = len < pl - (p0 + j) ? len : pl - (p0 + j);
    if (n > 0) {
#if EG_MASKED_STORES
      for (int v = j / VL; v <= (j + n - 1) / VL; ++v) {
        const int a = j > v * VL ? j - v * VL : 0, b = j + n < (v + 1) * VL ? j + n - v * VL : VL;
        const __mmask16 k = (__mmask16)(((1u << b) - 1) & ~((1u << a) - 1));
        for (int m = 0; m < MR; ++m)
          if (op[m]) {
            const int64_t o = h * WO + w - j + v * VL;
            vf a = acc[m][v];
            if (RES) a = act(a + (vf)_mm512_maskz_loadu_ps(k, rp[m] + o));
            _mm512_mask_storeu_ps(op[m] + o, k, (__m512)a);
          }
      }
#else
      for (int m = 0; m < MR; ++m)
        if (op[m] && RES)
          for (int q = 0; q < n; ++q)
            op[m][h * WO + w + q] = act(tmp[m][j + q] + rp[m][h * WO + w + q]);
        else if (op[m])
          std::memcpy(op[m] + h * WO + w, &tmp[m][j], n * sizeof(float));
#endif
    }
    j += (WQ - w);
  }
}

// The tile at p0 of a chunk ending at pl: a whole tile, or the chunk's last (p0 + T + NXM >= pl):
// the vectors its positions need plus at most NXM extra positions (see NXM).
template <bool FIRST, bool LAST>
static inline int run_tile(const float* __restrict pk, const ridx_t* __restrict ridx, int k0,
                           int k1, const float* __restrict wb, const float* bv, float* accbuf,
                           float* const* op, const float* const* rp, int p0, int pl, int hb,
                           bool wpf) {
  const int rem = pl - p0;
  if (RA || rem > T + NXM) {  // (RA: whole tiles, their stores clipped at pl)
    tile<FIRST, LAST, NV, 0>(pk, ridx, k0, k1, wb, bv, accbuf, op, rp, p0, pl, hb, wpf);
    return T;
  }
  switch (TILE_KIND[rem]) {
    EG_TILE_CASES
    default:  // (not generated: a whole tile, stores clipped at pl; the loop goes on past it)
      tile<FIRST, LAST, NV, 0>(pk, ridx, k0, k1, wb, bv, accbuf, op, rp, p0, pl, hb, wpf);
      return T;
  }
  return rem;
}

// Filter-vectorised tile (FV, planes of a few positions): NPT output positions from P0 of one
// plane, each an accumulator of the block's MR filters (one vector); per kept row, one load of
// the MR weights and a broadcast input value per position.  Every lane is a real output, where a
// position-vectorised tile of a 4 x 4 plane fills half of its lanes.  FV kernels have one slice.
// FV tiles stream each block's kept weights once a plane, at batch 1 from L3 or DRAM (ResNet-18's
// layer4: 3 MB a conv): prefetched WPF rows ahead; past the block's last row the hint fetches
// the next block's (weights are stored block after block).
template <int P0, int NPT>
static inline void fv_tile(const float* __restrict xb, const ridx_t* __restrict ridx, int k0,
                           int k1, const float* __restrict wb, const float* bv,
                           float* const* op, const float* const* rp) {
  vm acc[NPT];
#pragma GCC unroll 32
  for (int i = 0; i < NPT; ++i) acc[i] = ldm(bv);
#pragma GCC unroll 2
  for (int k = k0; k < k1; ++k) {
    const float* xr = xb + ridx[k];
    __builtin_prefetch(wb + (int64_t)(k + WPF) * MR);  // see WPF
    const vm wv = ldm(wb + (int64_t)k * MR);
#pragma GCC unroll 32
    for (int i = 0; i < NPT; ++i) acc[i] += wv * xr[FV_POFF[P0 + i]];
  }
#pragma GCC unroll 32
  for (int i = 0; i < NPT; ++i) {
    float e[MR];
    stm(e, acc[i]);
    const int q = P0 + i;  // output position h * WO + w
    for (int m = 0; m < MR; ++m)
      if (op[m]) {
        float v = e[m];
        if (RES) v += rp[m][q];
        op[m][q] = act(v);
      }
  }
}

#if EG_MASKED_STORES
// FVP (AVX-512, 8-filter blocks, even output widths): the FV tile with two positions a vector, so
// that every instruction fills 16 lanes, not 8.  Positions q and q + 1 of one row lie next to each
// other in every input row (FV_POFF[q + 1] = FV_POFF[q] + 1), so one 64-bit broadcast loads the
// pair into all lanes (x_q, x_q+1, x_q, ...); the block's weights and bias are duplicated in
// register to (w0, w0, w1, w1, ...), and lane 2m + j of pair i accumulates filter m at q + j.
template <int P0, int NPT>
static inline void fv_pair_tile(const float* __restrict xb, const ridx_t* __restrict ridx,
                                int k0, int k1, const float* __restrict wb, const float* bv,
                                float* const* op, const float* const* rp) {
  constexpr int NP = NPT / 2;
  static_assert(NPT % 2 == 0 && MR == 8, "FVP takes pairs of positions and 8-filter blocks");
  const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512 b2 = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(bv)));
  __m512 acc[NP];
#pragma GCC unroll 16
  for (int i = 0; i < NP; ++i) acc[i] = b2;
#pragma GCC unroll 2
  for (int k = k0; k < k1; ++k) {
    const float* xr = xb + ridx[k];
    __builtin_prefetch(wb + (int64_t)(k + WPF) * MR);  // see WPF
    const __m512 w2 =
        _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(wb + (int64_t)k * MR)));
#pragma GCC unroll 16
    for (int i = 0; i < NP; ++i) {
      double pair;
      std::memcpy(&pair, xr + FV_POFF[P0 + 2 * i], sizeof pair);
      acc[i] = _mm512_fmadd_ps(w2, _mm512_castpd_ps(_mm512_set1_pd(pair)), acc[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NP; ++i) {
    float e[16];
    _mm512_storeu_ps(e, acc[i]);
    const int q = P0 + 2 * i;  // output positions q, q + 1 of one row
    for (int m = 0; m < MR; ++m)
      if (op[m]) {
        float v0 = e[2 * m], v1 = e[2 * m + 1];
        if (RES) {
          v0 += rp[m][q];
          v1 += rp[m][q + 1];
        }
        op[m][q] = act(v0);
        op[m][q + 1] = act(v1);
      }
  }
}
#endif

// dst[i] = src[i * S] for i < n: a row of a strided conv's phase, or of a subsample.  Stride 2
// with AVX-512: two (masked) loads, the even lanes picked by one permute, a masked store; the
// masks keep every read inside the source row (it may end a user's tensor).  (No __restrict on
// the fills' pointers: with it, a fill that split each row between threads lost whole blocks of
// its stores, though the threads' lines were disjoint.)
template <int64_t S>
static inline void gather_row(float* dst, const float* src, int n) {
#if EG_MASKED_STORES
  if constexpr (S == 2) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int i = 0; i < n; i += 16) {
      const int m = n - i < 16 ? n - i : 16, cnt = 2 * m - 1;  // source floats needed
      const __mmask16 lo = cnt >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cnt) - 1);
      const __mmask16 hi = cnt > 16 ? (__mmask16)((1u << (cnt - 16)) - 1) : (__mmask16)0;
      const __m512 a = _mm512_maskz_loadu_ps(lo, src + 2 * i);
      const __m512 b = _mm512_maskz_loadu_ps(hi, src + 2 * i + 16);
      _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << m) - 1),
                            _mm512_permutex2var_ps(a, even, b));
    }
    return;
  }
#endif
  for (int i = 0; i < n; ++i) dst[i] = src[i * S];
}

#if EG_MASKED_STORES
// r[0..15] (16 rows of 16 floats) transposed in place: r[j][k] becomes r[k][j].
static inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + k]: column 4L + k of rows 4i .. 4i + 3, in lane L
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int k = 0; k < 4; ++k) {  // a 4 x 4 transpose of the 128-bit lanes of u[k], u[4 + k], ...
    const __m512 v0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
    t[k] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    t[8 + k] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
  for (int j = 0; j < 16; ++j) r[j] = t[j];
}
#endif

// The batch-last fill of input channel c: element (0, c, d, h, n) of the [1, CIN, DI, HI, WI]
// view (d, h: the image's rows and columns; n: the sample) is xin[n * XS4 + c * XS1 + d * XS2 +
// h * XS3], into the channel's part of the buffer (its phases: SD x SH; SW = 1 on the batch
// axis).  Element by element in the buffer's order, each read is a whole sample away from the
// last (a scalar gather); with AVX-512, 16 samples x 16 positions of a contiguous plane are
// loaded as 16 vectors and transposed in registers, each stored as one row piece.
static inline void bl_fill(const float* xin, float* x, int c) {
  static_assert(BLN == 0 || SW == 1, "a batch-last view has stride 1 along the batch");
  constexpr int64_t PLANE = FUSE ? XD : (int64_t)HQ * WQ;  // floats between a phase's planes
  float* base = x + (int64_t)c * SD * SH * DQ * PLANE;
  // row (a, i, j) of phase (a, b) holds input row d = i * SD + a - PD, column h = j * SH + b - PH
  auto row_of = [base](int d, int h) {
    const int a = (d + PD) % SD, i = (d + PD) / SD, b = (h + PH) % SH, j = (h + PH) / SH;
    return base + ((int64_t)(a * SH + b) * DQ + i) * PLANE + (int64_t)j * WQ;
  };
  for (int ph = 0; ph < SD * SH; ++ph)  // the padding: rows past the input, columns beside it
    for (int i = 0; i < DQ; ++i)
      for (int j = 0; j < HQ; ++j) {
        const int d = i * SD + ph / SH - PD, h = j * SH + ph % SH - PH;
        float* row = base + ((int64_t)ph * DQ + i) * PLANE + (int64_t)j * WQ;
        if (d < 0 || d >= DI || h < 0 || h >= HI) {
          std::memset(row, 0, WQ * sizeof(float));
          continue;
        }
        for (int k = 0; k < PW && k < WQ; ++k) row[k] = 0.f;
        for (int k = PW + WI; k < WQ; ++k) row[k] = 0.f;
      }
  const float* src = xin + c * XS1;
#if EG_MASKED_STORES
  if constexpr (XS3 == 1 && XS2 == HI && (DI * HI) % 16 == 0 && WI % 16 == 0 && PW + WI <= WQ) {
    for (int n0 = 0; n0 < WI; n0 += 16)
      for (int q0 = 0; q0 < DI * HI; q0 += 16) {
        __m512 r[16];
        for (int k = 0; k < 16; ++k) r[k] = _mm512_loadu_ps(src + (int64_t)(n0 + k) * XS4 + q0);
        transpose16(r);
        for (int j = 0; j < 16; ++j) {
          const int q = q0 + j;
          _mm512_storeu_ps(row_of(q / HI, q % HI) + PW + n0, r[j]);
        }
      }
    return;
  }
#endif
  for (int n = 0; n < WI && n + PW < WQ; ++n)
    for (int d = 0; d < DI; ++d)
      for (int h = 0; h < HI; ++h) row_of(d, h)[PW + n] = src[n * XS4 + d * XS2 + h * XS3];
}

// FUSE: rows [j0, j1) of plane i of channel c of sample n's padded buffer xs (sample n's part
// of the buffer): the raw input's rows, their zero borders too (every float of them is written).
static inline void fill_rows(const float* xin, float* xs, int n, int c, int i, int j0, int j1) {
  float* dst = xs + ((int64_t)c * DQ + i) * XD;  // (XD >= HQ * WQ)
  const int d = i - PD;
  if (d < 0 || d >= DI) {  // a depth padding plane
    std::memset(dst + (int64_t)j0 * WQ, 0, (size_t)(j1 - j0) * WQ * sizeof(float));
    return;
  }
  const float* src = xin + n * XS0 + c * XS1 + d * XS2;
  for (int j = j0; j < j1; ++j) {
    float* row = dst + (int64_t)j * WQ;
    const int h = j - PH;
    if (h < 0 || h >= HI) {
      std::memset(row, 0, WQ * sizeof(float));
      continue;
    }
    // PW zeros, the WI inputs, zeros to WQ (none where rows share their zero columns)
    for (int w = 0; w < PW; ++w) row[w] = 0.f;
    if (XS4 == 1)
      std::memcpy(row + PW, src + h * XS3, WI * sizeof(float));
    else  // a subsample of the input, gathered
      gather_row<XS4>(row + PW, src + h * XS3, WI);
    for (int w = PW + WI; w < WQ; ++w) row[w] = 0.f;
  }
}

// FUSE: plane i of channel c of sample n's padded buffer xs, whole.
static inline void fill_plane(const float* xin, float* xs, int n, int c, int i) {
  fill_rows(xin, xs, n, c, i, 0, HQ);
}

// PFILL: phase ph of channel c of sample n's buffer xs, zero borders too (rows [j0, j1) of each
// of its planes).
static inline void fill_phase(const float* xin, float* xs, int n, int c, int ph, int j0 = 0,
                              int j1 = HQ) {
  const int a = ph / (SH * SW), b = ph / SW % SH, e = ph % SW;
  float* pb = xs + ((int64_t)c * SD * SH * SW + ph) * DQ * HQ * WQ;
  const float* src = xin + n * XS0 + c * XS1;
  // columns k of this phase read w = k * SW + e - PW: real input for k in [k0, k1)
  const int k0 = (PW - e + SW - 1) / SW;
  const int k1a = (WI + PW - e + SW - 1) / SW, k1 = k1a < WQ ? k1a : WQ;
  for (int i = 0; i < DQ; ++i) {
    float* plane = pb + (int64_t)i * HQ * WQ;
    const int d = i * SD + a - PD;
    if (d < 0 || d >= DI) {  // depth padding
      std::memset(plane + (int64_t)j0 * WQ, 0, (size_t)(j1 - j0) * WQ * sizeof(float));
      continue;
    }
    for (int j = j0; j < j1; ++j) {
      float* dst = plane + (int64_t)j * WQ;
      const int h = j * SH + b - PH;
      if (h < 0 || h >= HI) {
        std::memset(dst, 0, WQ * sizeof(float));
        continue;
      }
      const float* sr = src + d * XS2 + h * XS3;
      for (int k = 0; k < k0 && k < WQ; ++k) dst[k] = 0.f;
      if (k1 > k0) gather_row<SW * XS4>(dst + k0, sr + (k0 * SW + e - PW) * XS4, k1 - k0);
      for (int k = k1 > k0 ? k1 : k0; k < WQ; ++k) dst[k] = 0.f;
    }
  }
}

// One sample's whole padded (phase) buffer: the per-sample fill (see per_sample).
static inline void fill_sample(const float* xin, float* xs, int n) {
  for (int c = 0; c < CIN; ++c) {
    if constexpr (FUSE)
      for (int i = 0; i < DQ; ++i) fill_plane(xin, xs, n, c, i);
    else
      for (int ph = 0; ph < SD * SH * SW; ++ph) fill_phase(xin, xs, n, c, ph);
  }
}

// Rows [j0, j1) of every channel's plane of sample n's buffer xs (every phase's, PFILL): a row
// fill (see row_fills).  In a thread's own slot (tail) and where j1 = HQ, also the PW floats
// after each plane's last row: that row's right padding runs on into them where rows share
// their zero columns (the next plane's first left padding, or the slot's gap after the last
// plane), and another call may have left anything there.  (Each plane's, just after it, so a
// next plane's row 0 filled later stands; in a shared buffer the thread filling that row 0
// writes them.)
constexpr int64_t RGAP = (PW / 16 + 1) * 16;  // floats after each row-fill slot (see row_fills)
static inline void fill_sample_rows(const float* xin, float* xs, int n, int j0, int j1,
                                    bool tail) {
  constexpr int64_t PL = (int64_t)HQ * WQ;
  for (int c = 0; c < CIN; ++c) {
    if constexpr (FUSE) {
      fill_rows(xin, xs, n, c, 0, j0, j1);
      if (tail && j1 == HQ) std::memset(xs + c * XD + PL, 0, PW * sizeof(float));
    } else
      for (int ph = 0; ph < SD * SH * SW; ++ph) {
        fill_phase(xin, xs, n, c, ph, j0, j1);
        if (tail && j1 == HQ)
          std::memset(xs + (c * SD * SH * SW + ph + 1) * PL, 0, PW * sizeof(float));
      }
  }
}

// A kernel's 64-byte aligned scratch.  Out of memory ends the process with a message, as `new`
// does (its exception cannot leave an OpenMP region), instead of writing through a null pointer.
static float* scratch_alloc(size_t floats) {
  void* p = std::aligned_alloc(64, (floats * 4 + 63) / 64 * 64);
  if (p == nullptr) {
    std::fprintf(stderr, "edgeguard: out of memory for a kernel's %zu-byte scratch\n", floats * 4);
    std::abort();
  }
  return static_cast<float*>(p);
}

// A thread's scratch for one call (none for 0 bytes), from a buffer of its own kept from call to
// call (slot: which of the call's buffers; grown when a call needs more): allocating each call,
// cold after the kernels before it, cost small layers more than their work (docs/compiler.md);
// past KEEP_BYTES the call allocates its own and frees it.
constexpr size_t KEEP_BYTES = 256 << 10;
struct KeptScratch {
  void* p = nullptr;
  bool owned = false;
  KeptScratch(size_t bytes, int slot) {
    static thread_local void* kept[6] = {};
    static thread_local size_t cap[6] = {};
    if (bytes == 0) return;
    if (bytes > KEEP_BYTES) {
      p = scratch_alloc((bytes + 3) / 4);
      owned = true;
      return;
    }
    if (bytes > cap[slot]) {
      std::free(kept[slot]);
      kept[slot] = scratch_alloc((bytes + 3) / 4);
      cap[slot] = bytes;
    }
    p = kept[slot];
  }
  ~KeptScratch() {
    if (owned) std::free(p);
  }
  KeptScratch(const KeptScratch&) = delete;
  KeptScratch& operator=(const KeptScratch&) = delete;
};

// The per-sample fill's buffer: one sample's padded input, per thread and kernel, kept from call
// to call (allocated once, never freed, zeroed), with slack after it for the tiles' overhang.
constexpr int64_t SAMPLE_SLACK = 1024;
static float* sample_buffer() {
  static thread_local float* buf = nullptr;
  if (!buf) {
    buf = scratch_alloc(XN + SAMPLE_SLACK);
    // all of it, once: heap garbage is mostly subnormal as floats, and any float the fills
    // leave (a gap between planes) would reach the FMAs of dropped lanes at a microcode assist each
    std::memset(buf, 0, (XN + SAMPLE_SLACK) * sizeof(float));
  }
  return buf;
}

// Per-sample fills: where each thread takes whole samples (a batch of a sample per thread or
// more) and a sample's padded input fits an L2, each thread fills one sample at a time into its
// own buffer (sample_buffer) just before that sample's tasks, instead of all samples into x
// first: the buffer stays in the thread's L2 from sample to sample, where the whole batch's (9 MB
// for ResNet-18's layer1 at batch 32) went to memory between its fill and its tiles.  The kernel
// then never touches x; the caller asks (edgeguard_conv_schedule) and passes no batch buffer.
static inline bool fills_per_sample(int batch, int nthreads) {
  return BLN == 0 && !FV && !PLANES_INNER && batch >= nthreads && XN * 4 <= (1 << 20);
}

// Chunks: CT tiles (CH positions) of a plane, or, with a fused pool, RC output rows (whole
// pooling windows; the rows and planes that floor pooling drops are not computed at all).
constexpr int CH = CT * T, HC = HOP * PKH;
constexpr int PP = RA ? HO * WO : P;  // positions a plane's tiles number (RA: output ones)
constexpr int NCH = POOL ? (HC + RC - 1) / RC : (PP + CH - 1) / CH;
constexpr int DU = POOL ? DOP : DO;  // plane units: PKD planes each with a pool, else 1
constexpr int64_t SCR_PLANE = POOL ? (int64_t)NBG * MR * RC * WO : 0;  // floats per plane
constexpr int64_t PLANE_ACC_BYTES = ((int64_t)CT * NBG * TS + SCR_PLANE) * 4;

// Plane groups (NDG): where a chunk is a whole plane (layers with long chunks or few tiles), a
// task takes as many planes as still leaves a task per thread, so the weights (past the L2 there)
// are streamed fewer times; elsewhere one plane per task.  The partial sums of a task's planes
// stay within 1 MB (an L2): past it, fewer planes per task (with a pool, the scratch of a task's
// unpooled rows counts too).
static inline int plane_groups(int batch, int nthreads) {
  if (NCH == 1)
    for (int k = 1; k <= DU; ++k)
      if (DU % k == 0 && (int64_t)k * FG * batch >= nthreads &&
          (DU / k) * PKD * PLANE_ACC_BYTES <= (1 << 20))
        return k;
  return DU;
}

// Row fills: with fewer samples than threads (one plane a sample: 2-D layers at batch 1), each
// thread fills the padded rows its own static run of tasks reads, every channel (every phase,
// where strided), and computes that run, reading only what it filled: no barrier, and no row
// goes from core to core.  Filled by channels, every tile read the other threads' channels from
// their caches; filled by rows into one shared buffer, the rows two runs share (the kernel's
// halo) went from core to core twice a call, and the threads waited for each other's fill.  So
// each thread has its own slots in x: sample n of thread t's run at x + (n + t) * XSLOT (runs are
// consecutive, so no two threads' slots meet; a slot is XN + RGAP floats), and x holds batch +
// nthreads - 1 slots, while the nthreads - 1 slots past the batch stay within ROW_SLOT_BYTES
// (row_slots); past it each thread fills its own rows into one shared buffer and the threads
// meet at a barrier.  Only with 16 tasks a thread or more, or tasks that split evenly (a 16 x 16
// plane's 8 chunks on 2 threads; an 8 x 8 plane's 2 on 2: each thread's one task then fills and
// reads only its own rows, where filter-block parts read the whole buffer, half of it from the
// other core, after a barrier).
constexpr bool ROWS = DQ == 1 && DO == 1 && BLN == 0 && !FV && !PLANES_INNER;
constexpr int64_t XSLOT = XN + RGAP;
static inline bool row_fills(int batch, int nthreads) {
  const int64_t ntasks = (int64_t)batch * NCH * FG;
  return ROWS && !fills_per_sample(batch, nthreads) && batch < nthreads &&
         (ntasks >= 16 * nthreads || (ntasks % nthreads == 0 && ntasks >= nthreads));
}
static inline bool row_slots(int batch, int nthreads) {
  return row_fills(batch, nthreads) && (int64_t)(nthreads - 1) * XSLOT * 4 <= ROW_SLOT_BYTES;
}

// Few tasks that do not split evenly over the threads (a batch smaller than the threads over
// small planes: 2 chunks on 3 threads, a 4 x 5 plane's one): each task's filter blocks are split
// into parts, about 8 tasks a thread in all, which the dynamic schedule balances.
static inline int block_parts(int batch, int nthreads) {
  // (not batch-last kernels: their batch is folded into the positions, and every part would
  // read the whole, large phase buffer again)
  if (FV || PLANES_INNER || BLN > 0 || batch >= nthreads || row_fills(batch, nthreads)) return 1;
  const int64_t ntasks = (int64_t)batch * plane_groups(batch, nthreads) * NCH * FG;
  if (ntasks >= 8 * nthreads) return 1;
  const int parts = (int)((8 * nthreads + ntasks - 1) / ntasks);
  return parts < NBG ? parts : NBG;
}

// How a call of this batch on nthreads threads is scheduled (tests read it): 1 per-sample fills,
// 2 row fills, plus 4 * the block parts of each task.
extern "C" int edgeguard_conv_schedule(int batch, int nthreads) {
  return (fills_per_sample(batch, nthreads) ? 1 : 0) + (row_fills(batch, nthreads) ? 2 : 0) +
         4 * block_parts(batch, nthreads);
}

// The floats x must hold for a call that fills its input (xin given): none for per-sample fills
// (x is not touched), batch + nthreads - 1 slots for row fills into slots, else batch samples.
extern "C" int64_t edgeguard_conv_buffer(int batch, int nthreads) {
  if (fills_per_sample(batch, nthreads)) return 0;
  return row_slots(batch, nthreads) ? (batch + nthreads - 1) * XSLOT : batch * XN;
}

extern "C" void edgeguard_conv(const float* xin, float* x, const float* w, const float* bias,
                               float* out, const float* res, float* tout, const float* tres,
                               int batch, int nthreads) {
  // GEMM-style blocking.  One task = DGP output depth planes x one chunk of CT tiles of each x one
  // group of filter blocks.  Row slices are the outer loop, so one slice of the group's weights
  // (slice-major, sequential) stays in L2 while the task's tiles use it; each tile's kept input
  // rows of the slice are read (or packed once, PACK) and reused by every filter block of the
  // group.  The group's weights are read once per task.
  const int ndg = plane_groups(batch, nthreads);
  const int dgp = DU / ndg * PKD;
  const bool per_sample = xin != nullptr && fills_per_sample(batch, nthreads);
  const bool rowfill = xin != nullptr && row_fills(batch, nthreads);
  const bool slots = rowfill && row_slots(batch, nthreads);
  const bool wpf = batch < nthreads && BLN == 0;  // see WPF
#pragma omp parallel num_threads(nthreads)
  {
    const size_t nptr = (size_t)dgp * NB * MR;
    KeptScratch pk_s(PACK ? (size_t)KC * T * 4 : 0, 0), bv_s(NB * MR * 4, 1),
        op_s(nptr * sizeof(float*), 2), rp_s(nptr * sizeof(float*), 3),
        acc_s((size_t)dgp * CT * NBG * TS * 4, 4), scr_s(POOL ? (size_t)dgp * SCR_PLANE * 4 : 0, 5);
    float* pk = static_cast<float*>(pk_s.p);
    float* bvall = static_cast<float*>(bv_s.p);
    float** opall = static_cast<float**>(op_s.p);
    const float** rpall = static_cast<const float**>(rp_s.p);  // RES: the residual's rows
    float* accbuf = static_cast<float*>(acc_s.p);
    float* scr = static_cast<float*>(scr_s.p);
    // The fills write every float of the buffer, its zero borders too, so the buffer may be any
    // free one (the compiled model's pool hands out one still in cache) rather than one kept
    // zero-bordered per layer.
    if (BLN > 0 && xin) {  // batch-last: bl_fill, channel by channel (phases too)
#pragma omp for schedule(static)
      for (int c = 0; c < CIN; ++c) bl_fill(xin, x, c);
    } else if (FUSE && xin && !per_sample && !rowfill) {  // every thread takes this or none
#pragma omp for collapse(3) schedule(static)
      for (int n = 0; n < batch; ++n)
        for (int c = 0; c < CIN; ++c)
          for (int i = 0; i < DQ; ++i) fill_plane(xin, x + n * XN, n, c, i);
    }  // the implicit barrier: the buffer is complete before any tile reads it
    if (PFILL && BLN == 0 && xin && !per_sample && !rowfill) {  // strided: the kernel splits its input
#pragma omp for collapse(3) schedule(static)
      for (int n = 0; n < batch; ++n)
        for (int c = 0; c < CIN; ++c)
          for (int ph = 0; ph < SD * SH * SW; ++ph) fill_phase(xin, x + n * XN, n, c, ph);
    }  // (the implicit barrier again)
    if constexpr (FV) {  // one task = one filter block x one plane; one slice (NS == 1)
      const int fvtasks = batch * DO * NB;
#pragma omp for schedule(dynamic, task_run(fvtasks, nthreads))
      for (int task = 0; task < fvtasks; ++task) {
        const int b = task % NB, d = task / NB % DO, n = task / (NB * DO);
        const int32_t* ksb = KS + b * (KD + 1);
        // (maybe_unused: a kernel without FV tiles has an empty EG_FV_CASES)
        [[maybe_unused]] const int k0 = KB[b] + ksb[KLO[d]], k1 = KB[b] + ksb[KHI[d]];
        [[maybe_unused]] const float* wb = w + ((int64_t)WOFF[b] - KB[b] - ksb[0]) * MR;
        [[maybe_unused]] const float* xb = x + n * XN + (int64_t)d * XD;
        [[maybe_unused]] float bv[MR];
        [[maybe_unused]] float* op[MR];
        [[maybe_unused]] const float* rp[MR];
        for (int m = 0; m < MR; ++m) {
          const int f = FIL[b * MR + m];
          bv[m] = f >= 0 ? bias[f] : 0.f;
          const int64_t o = ((int64_t)(n * M + f) * DO + d) * OPLANE;
          op[m] = f >= 0 ? out + o : nullptr;
          rp[m] = f >= 0 && RES ? res + ((int64_t)(n * M + f) * DO + d) * RPLANE : nullptr;
        }
        EG_FV_CASES
      }
    } else {
    // Tasks in (sample, plane group, chunk, filter group) order, handed out one at a time.  A
    // temporal kernel (kd x 1 x 1: an input row is read by kd planes and by no neighbouring
    // position) has its planes innermost instead, and each thread takes one run of consecutive
    // tasks, so the next plane's task finds most of its input rows in the thread's L2.
    // With at least a sample per thread, each thread takes whole samples in one static run, the
    // same ones in every layer (the tasks are sample-major), so a sample's activations stay with
    // its core from layer to layer instead of being read from lines the other core wrote.
    const int ntasks = batch * ndg * NCH * FG;
    const int parts = block_parts(batch, nthreads);  // (1 with row fills: static runs)
    const int tchunk =
        PLANES_INNER ? (ntasks + nthreads - 1) / nthreads : task_run(ntasks * parts, nthreads);
    // rowfill: thread t's tasks are [t * kr, t * kr + kr), dealt over the team this region got,
    // which may be smaller than asked for (OMP_THREAD_LIMIT, a caller's own parallel region)
    const int team = omp_get_num_threads();
    const int kr = (ntasks + team - 1) / team;
    // sample n's padded buffer in x as thread t reads it: its own slot (row fills into slots)
    auto sample_at = [&](int n, int t) -> float* {
      return slots ? x + (n + t) * XSLOT : x + n * XN;
    };
    if (rowfill) {
      // the buffer row (n * HQ + padded row; a phase row where strided) a task's first output
      // row starts on
      auto row_at = [&](int task) -> int64_t {
        if (task >= ntasks) return (int64_t)batch * HQ;
        const int q = task / FG, n = q / NCH, c = q % NCH;
        const int h = POOL ? c * RC : RA ? c * CH / WO : c * CH / WQ;
        return (int64_t)n * HQ + (h < HQ ? h : HQ);
      };
      // the rows [j0, j1] of each of its samples that the run's output rows start on (j1: where
      // the next thread's run starts); in its own slots also the HQ - HO rows below them that
      // their windows reach (of every phase, where strided), in a shared buffer the next thread
      // fills those, and the threads meet at a barrier
      const int t = omp_get_thread_num();
      const int halo = slots ? HQ - HO + 1 : 0;
      const int64_t r0 = row_at(t * kr), r1 = row_at((t + 1) * kr);
      for (int64_t r = r0; r < r1;) {
        const int n = (int)(r / HQ), j0 = (int)(r % HQ);
        const int j1 = r1 - r < HQ - j0 ? j0 + (int)(r1 - r) : HQ;
        const int je = j1 + halo < HQ ? j1 + halo : HQ;
        fill_sample_rows(xin, sample_at(n, t), n, j0, je, slots);
        r += j1 - j0;
      }
      if (!slots) {
#pragma omp barrier
      }
      // static with chunk kr: thread t takes exactly tasks [t * kr, t * kr + kr) (OpenMP deals
      // static chunks to the threads in order)
      omp_set_schedule(omp_sched_static, kr);
    } else if (batch >= nthreads || PLANES_INNER)  // (planes innermost: one run a thread anyway)
      omp_set_schedule(omp_sched_static, 0);
    else
      omp_set_schedule(omp_sched_dynamic, tchunk);
    float* xsample = per_sample ? sample_buffer() : nullptr;
    int filled = -1;  // the sample xsample holds (per_sample: static runs, samples in order)
#pragma omp for schedule(runtime)
    for (int tp = 0; tp < ntasks * parts; ++tp) {
      const int task = tp / parts, part = tp % parts;
      const int g = task % FG, q = task / FG, n = q / (ndg * NCH);
      if (per_sample && n != filled) {
        fill_sample(xin, xsample, n);
        filled = n;
      }
      const float* xs =  // sample n's padded input
          per_sample ? xsample : sample_at(n, omp_get_thread_num());
      const int dg = PLANES_INNER ? q % ndg : q / NCH % ndg;
      const int c = PLANES_INNER ? q / ndg % NCH : q % NCH;
      const int d0 = dg * dgp;
      const int hb = POOL ? c * RC : 0, he = hb + RC < HC ? hb + RC : HC;  // pool: rows
      const int pbeg = POOL ? hb * WQ : c * CH;
      const int pend0 = POOL ? (he - 1) * WQ + WO : (c + 1) * CH;  // pool: no padding column
      const int pend = pend0 < PP ? pend0 : PP;
      const int nbg = BG[g + 1] - BG[g];  // this part's blocks of the group
      const int b0 = BG[g] + nbg * part / parts, b1 = BG[g] + nbg * (part + 1) / parts;
      for (int i = b0 * MR; i < b1 * MR; ++i) {  // once per task, not per (block, slice)
        const int f = FIL[i];
        bvall[i] = f >= 0 ? bias[f] : 0.f;
        for (int dd = 0; dd < dgp; ++dd) {
          const int64_t o = ((int64_t)(n * M + f) * DO + d0 + dd) * OPLANE;
          opall[(size_t)dd * NB * MR + i] =
              f < 0  ? nullptr
              : POOL ? scr + ((size_t)(i - b0 * MR) * dgp + dd) * RC * WO
                     : out + o;
          rpall[(size_t)dd * NB * MR + i] =
              RES && f >= 0 ? res + ((int64_t)(n * M + f) * DO + d0 + dd) * RPLANE : nullptr;
        }
      }
      for (int s = 0; s < NS; ++s) {
        const int r0 = s * KC, r1 = r0 + KC < KU ? r0 + KC : KU;
        const float* pks = pk - (int64_t)r0 * T;  // ridx are union indices
        for (int dd = 0; dd < dgp; ++dd)
          for (int p0 = pbeg, t = dd * CT, step = T; p0 < pend; p0 += step, ++t) {
            const float* xb = xs + (int64_t)(d0 + dd) * XD;
            if (PACK)
              for (int r = r0; r < r1; ++r)
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v)
                  st(pk + (r - r0) * T + v * VL, ld(xb + UROFF[r] + p0 + v * VL));
            const float* base = PACK ? pks : xb + (RA ? p0 / WO * WQ + p0 % WO : p0);
            const int klo = KLO[d0 + dd], khi = KHI[d0 + dd];
            for (int b = b0; b < b1; ++b) {
              const int32_t* ksb = KS + (b * NS + s) * (KD + 1);
              const int k0 = KB[b] + ksb[klo], k1 = KB[b] + ksb[khi];
              // weights are stored slice-major: one slice of every block is one sequential run
              const float* wb = w + ((int64_t)WOFF[b * NS + s] - KB[b] - ksb[0]) * MR;
              const float* bv = bvall + b * MR;
              float* const* op = opall + (size_t)dd * NB * MR + b * MR;
              const float* const* rp = rpall + (size_t)dd * NB * MR + b * MR;
              float* ab = accbuf + ((size_t)t * NBG + b - b0) * TS;
              if (NS == 1)
                step = run_tile<true, true>(base, RIDX, k0, k1, wb, bv, ab, op, rp, p0, pend, hb,
                                            wpf);
              else if (s == 0)
                step = run_tile<true, false>(base, RIDX, k0, k1, wb, bv, ab, op, rp, p0, pend, hb,
                                             wpf);
              else if (s == NS - 1)
                step = run_tile<false, true>(base, RIDX, k0, k1, wb, bv, ab, op, rp, p0, pend, hb,
                                             wpf);
              else
                step = run_tile<false, false>(base, RIDX, k0, k1, wb, bv, ab, op, rp, p0, pend, hb,
                                              wpf);
            }
          }
      }
      if (POOL)  // the task's windows are complete: pool its scratch into the output
        for (int i = b0 * MR; i < b1 * MR; ++i) {
          const int f = FIL[i];
          if (f < 0) continue;
          for (int dp = 0; dp < dgp / PKD; ++dp)
            for (int hp = hb / PKH; hp < he / PKH; ++hp) {
              float row[WO];  // the max over the window's planes and rows, then over columns
              const float* sp = scr + ((size_t)(i - b0 * MR) * dgp + dp * PKD) * RC * WO +
                                (int64_t)(hp * PKH - hb) * WO;
              for (int q = 0; q < WO; ++q) row[q] = sp[q];
              for (int a = 0; a < PKD; ++a)
                for (int e = 0; e < PKH; ++e) {
                  const float* sr = sp + ((size_t)a * RC + e) * WO;
                  for (int q = 0; q < WO; ++q) row[q] = sr[q] > row[q] ? sr[q] : row[q];
                }
              float* o = out + (((int64_t)(n * M + f) * DOP + d0 / PKD + dp) * HOP + hp) * WOP;
              for (int q = 0; q < WOP; ++q) {
                float mx = row[q * PKW];
                for (int e = 1; e < PKW; ++e) mx = row[q * PKW + e] > mx ? row[q * PKW + e] : mx;
                o[q] = mx;
              }
            }
        }
    }
    }  // FV
    if constexpr (BLN > 0) {  // batch-last: out is [Q, N]; tout = act(out^T (+ tres)), [N, Q]
      constexpr int64_t Q = (int64_t)M * DO * HO;  // [1, M, H, W, N]: DO = H, HO = W, WO = N
      constexpr int QB = 16;  // a block of QB rows of out (QB x N floats) stays in L1
      // sample-major (blocks of 16 samples, one line of a row of out): with 32 samples and 2
      // threads each thread writes whole samples, as the next layer's tasks read them
      constexpr int SB = 16, NSB = (BLN + SB - 1) / SB;
      constexpr int64_t NQB = (Q + QB - 1) / QB;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < NSB * NQB; ++t) {
        const int64_t q0 = t % NQB * QB;
        const int nq = Q - q0 < QB ? (int)(Q - q0) : QB;
        const int n0 = (int)(t / NQB) * SB, n1 = n0 + SB < BLN ? n0 + SB : BLN;
#if EG_MASKED_STORES
        if (nq == 16 && n1 - n0 == 16) {  // 16 rows x 16 samples transposed in registers
          __m512 r[16];
          for (int q = 0; q < 16; ++q) r[q] = _mm512_loadu_ps(out + (q0 + q) * BLN + n0);
          transpose16(r);
          for (int j = 0; j < 16; ++j) {
            vf v;
            std::memcpy(&v, &r[j], sizeof v);
            if (BLRES) v += ld(tres + (n0 + j) * Q + q0);
            st(tout + (n0 + j) * Q + q0, BLRELU ? lrelu(v) : v);
          }
          continue;
        }
#endif
        for (int n = n0; n < n1; ++n) {
          float* to = tout + n * Q + q0;
          const float* src = out + q0 * BLN + n;
          for (int q = 0; q < nq; ++q) {
            float v = src[(int64_t)q * BLN];
            if (BLRES) v += tres[n * Q + q0 + q];
            to[q] = BLRELU ? lrelu(v) : v;
          }
        }
      }
    }
#if EG_MASKED_STORES
    if (NT) _mm_sfence();  // the streamed stores are visible before the region's barrier
#endif
  }
}
