// edgeguard CPU fused pointwise + depthwise convolution (a MobileNet block's 1x1 expand, its
// activation, TF's SAME zero padding and the depthwise conv), one per layer pair and input size.
// edgeguard.compiler.pointwise_depthwise writes the header in place of the include of eg_layer.h:
// input C x HI x WI, F expanded channels (one depthwise filter each), output F x HO x WO, kernel
// KH x KW, stride SH x SW, zero padding PT (top) / PL (left) of the expanded plane with the
// bottom/right implied by the output size, ACT (0 none, 1 ReLU, capped at PWCAP where PWCAP > 0,
// 2 scaled hard-swish s * x * relu6(x + 3)) after the 1x1, RELU (0/1) after the depthwise, capped
// at CAP where CAP > 0, VL floats per vector, NT
// vectors of outputs per tile, RB output rows per band, FB filters expanded together (a block:
// its weights a [kept channel][FB] panel over the union of the block's kept channels, zeros where
// a filter does not read one), FG block groups per band (work items).
//
// The expanded tensor (F planes of HI x WI) never reaches memory.  A work item is a band of RB
// output rows and a group of filters: its thread copies the rows of every input channel that the
// band reads into zero-padded, stride-deinterleaved phase rows (column j of the padded plane goes
// to phase j % SW at j / SW; layout [row][phase][column]), then per block of FB filters forms
// their expanded bands as sparse linear combinations of those channel bands (the 1x1 conv is the
// same combination at every position; each input vector loaded serves FB filters), zeroes their
// padding positions, and runs the depthwise taps on them while they are in L1/L2.  Rows shared by
// neighbouring bands are expanded by both.
#include <cstdint>
#include <cstring>
#include <vector>

#include "eg_layer.h"

typedef float vf __attribute__((vector_size(VL * 4)));
static inline vf ld(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

constexpr int T = NT * VL;                              // outputs per tile
constexpr int WPH = ((WO - 1) * SW + KW + SW - 1) / SW;  // columns per phase
constexpr int BR = (RB - 1) * SH + KH;                  // padded rows a band reads
constexpr int ROW = SW * WPH;                           // floats of one padded row (all phases)
constexpr int BAND = BR * ROW;                          // floats of one channel's band
constexpr int LS = (BAND + T - 1) / T * T + T + KW;     // a band's stride: whole tiles + slack
constexpr int NB = (HO + RB - 1) / RB;                  // bands
constexpr int NBLK = (F + FB - 1) / FB;                 // filter blocks
constexpr int BPG = (NBLK + FG - 1) / FG;               // blocks per group

static inline vf act(vf v, float s) {
  const vf zero = {};
  if (ACT == 1) {
    v = v < zero ? zero : v;
    if (PWCAP > 0.f) v = v > PWCAP ? zero + PWCAP : v;
    return v;
  }
  if (ACT == 2) {
    vf t = v + 3.0f;
    t = t < zero ? zero : t;
    t = t > 6.0f ? zero + 6.0f : t;
    return v * t * s;
  }
  return v;
}

#include "eg_part_phase_row.h"  // after the constants they use
#include "eg_part_dw_row.h"

extern "C" void edgeguard_pwdw(const float* x, const int32_t* off, const int32_t* idx,
                               const float* val, const float* bpw, const float* wdw,
                               const float* bdw, float* out, int batch, int nthreads,
                               float act_scale) {
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> xb((size_t)C * LS, 0.0f), ebuf((size_t)FB * LS, 0.0f);
    float* xp = xb.data();
    float* e = ebuf.data();
    int have = -1;  // the (image, band) whose input rows xp holds
    const vf zero = {};
#pragma omp for schedule(static)
    for (int item = 0; item < batch * NB * FG; ++item) {
      const int nb = item / FG, g = item % FG;
      const int n = nb / NB, band = nb % NB;
      const int oh0 = band * RB;
      const int rows = HO - oh0 < RB ? HO - oh0 : RB;
      const int pr0 = oh0 * SH;  // first padded row of the band
      if (nb != have) {
        have = nb;
        for (int c = 0; c < C; ++c) {
          const float* xc = x + ((int64_t)n * C + c) * HI * WI;
          float* xs = xp + (int64_t)c * LS;
          for (int r = 0; r < BR; ++r) {
            float* dst = xs + r * ROW;
            const int ih = pr0 + r - PT;
            if (ih < 0 || ih >= HI) {
              std::memset(dst, 0, sizeof(float) * ROW);
              continue;
            }
            const float* xr = xc + (int64_t)ih * WI;
            phase_row<WPH>(xr, dst);
          }
        }
      }
      const int b1 = (g + 1) * BPG < NBLK ? (g + 1) * BPG : NBLK;
      for (int blk = g * BPG; blk < b1; ++blk) {
        const int fb0 = blk * FB, nf = F - fb0 < FB ? F - fb0 : FB;
        // the block's expanded bands: bias + sum over kept input channels, then the activation
        for (int i0 = 0; i0 < BAND; i0 += T) {
          vf acc[FB][NT];
#pragma GCC unroll 8
          for (int b = 0; b < FB; ++b)
#pragma GCC unroll 8
            for (int i = 0; i < NT; ++i) acc[b][i] = zero + bpw[fb0 + b];
          for (int j = off[blk]; j < off[blk + 1]; ++j) {
            const float* s = xp + (int64_t)idx[j] * LS + i0;
            vf xv[NT];
#pragma GCC unroll 8
            for (int i = 0; i < NT; ++i) xv[i] = ld(s + i * VL);
#pragma GCC unroll 8
            for (int b = 0; b < FB; ++b) {
              const vf wv = zero + val[(int64_t)j * FB + b];
#pragma GCC unroll 8
              for (int i = 0; i < NT; ++i) acc[b][i] += wv * xv[i];
            }
          }
#pragma GCC unroll 8
          for (int b = 0; b < FB; ++b)
#pragma GCC unroll 8
            for (int i = 0; i < NT; ++i)
              st(e + b * LS + i0 + i * VL, act(acc[b][i], act_scale));
        }
        for (int b = 0; b < nf; ++b) {
          const int f = fb0 + b;
          float* ef = e + b * LS;
          // padding of the expanded plane is zero (the 1x1 of a zero input is not)
          for (int r = 0; r < BR; ++r) {
            float* er = ef + r * ROW;
            const int ih = pr0 + r - PT;
            if (ih < 0 || ih >= HI) {
              std::memset(er, 0, sizeof(float) * ROW);
              continue;
            }
            for (int p = 0; p < SW; ++p)
              for (int q = 0; q < WPH; ++q) {
                const int iw = q * SW + p - PL;
                if (iw >= 0 && iw < WI) {
                  q = (WI - 1 + PL - p) / SW;  // the last column inside the row
                  continue;
                }
                er[p * WPH + q] = 0.0f;
              }
          }
          // the depthwise taps over the band
          const float* wk = wdw + (int64_t)f * KH * KW;
          float* o = out + ((int64_t)n * F + f) * HO * WO;
          for (int ol = 0; ol < rows; ++ol)
            dw_row<ROW, WPH>(ef + ol * SH * ROW, wk, bdw[f], o + (int64_t)(oh0 + ol) * WO);
        }
      }
    }
  }
}
