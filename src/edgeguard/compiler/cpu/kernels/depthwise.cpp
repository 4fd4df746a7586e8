// edgeguard CPU depthwise convolution (groups = input channels, M outputs per input channel), one
// per layer and input size.  edgeguard.compiler.depthwise writes the layer's header in place of
// the include of eg_layer.h: input C x HI x WI, output C * M x HO x WO, kernel KH x KW, stride
// SH x SW, zero padding PT (top) / PL (left) with the bottom/right implied by the output size,
// RELU (0/1) capped at CAP where CAP > 0 (ReLU6), VL floats per vector and NT vectors of outputs
// per tile.
//
// Each thread copies one input plane into zero-padded, stride-deinterleaved "phase" planes
// (column j of the padded plane goes to phase j % SW at j / SW), so every tap reads a contiguous
// run of inputs for a tile of consecutive outputs: the tap loop is a vector multiply-add on NT
// accumulator vectors that stay in registers.
#include <cstdint>
#include <cstring>
#include <vector>

#include "eg_layer.h"

typedef float vf __attribute__((vector_size(VL * 4)));
static inline vf ld(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

constexpr int T = NT * VL;                              // outputs per tile
constexpr int HP = (HO - 1) * SH + KH;                  // padded rows read
constexpr int WPH = ((WO - 1) * SW + KW + SW - 1) / SW;  // columns per phase
constexpr int PHASE = HP * WPH;

#include "eg_part_phase_row.h"  // after the constants they use
#include "eg_part_dw_row.h"

extern "C" void edgeguard_dwconv(const float* x, const float* w, const float* b, float* out,
                                 int batch, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    // T + KW floats of slack: a tail tile's unused lanes may read past the last phase row
    std::vector<float> buf((size_t)SW * PHASE + T + KW, 0.0f);
    float* ph = buf.data();
#pragma omp for schedule(static)
    for (int nc = 0; nc < batch * C; ++nc) {
      const float* xp = x + (int64_t)nc * HI * WI;
      for (int r = 0; r < HP; ++r) {
        float* dst = ph + r * WPH;
        const int ih = r - PT;
        if (ih < 0 || ih >= HI) {
          for (int p = 0; p < SW; ++p) std::memset(dst + p * PHASE, 0, sizeof(float) * WPH);
          continue;
        }
        const float* xr = xp + (int64_t)ih * WI;
        phase_row<PHASE>(xr, dst);
      }
      const int n = nc / C, c = nc % C;
      for (int m = 0; m < M; ++m) {
        const int oc = c * M + m;
        const float* wk = w + (int64_t)oc * KH * KW;
        float* o = out + ((int64_t)n * C * M + oc) * HO * WO;
        for (int oh = 0; oh < HO; ++oh)
          dw_row<WPH, PHASE>(ph + oh * SH * WPH, wk, b[oc], o + oh * WO);
      }
    }
  }
}
