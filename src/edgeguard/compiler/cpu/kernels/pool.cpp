// edgeguard CPU max pooling, one per layer and input size (PyTorch's CPU max_pool3d computes
// indices even in inference).  edgeguard.compiler.pool writes the layer's header in place of the
// include of eg_layer.h: input C x DI x HI x WI, output DO x HO x WO, window KD x KH x KW, stride
// SD x SH x SW, padding PD x PH x PW.
#include <cstdint>
#include <limits>

#include "eg_layer.h"

extern "C" void edgeguard_pool(const float* x, float* out, int batch, int nthreads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
  for (int nc = 0; nc < batch * C; ++nc)
    for (int od = 0; od < DO; ++od) {
      float row[WI];
      for (int oh = 0; oh < HO; ++oh) {
        for (int w = 0; w < WI; ++w) row[w] = -std::numeric_limits<float>::infinity();
        for (int kd = 0; kd < KD; ++kd) {
          const int id = od * SD - PD + kd;
          if (id < 0 || id >= DI) continue;
          for (int kh = 0; kh < KH; ++kh) {
            const int ih = oh * SH - PH + kh;
            if (ih < 0 || ih >= HI) continue;
            const float* xr = x + (((int64_t)nc * DI + id) * HI + ih) * WI;
            for (int w = 0; w < WI; ++w) row[w] = xr[w] > row[w] ? xr[w] : row[w];  // vectorised
          }
        }
        float* o = out + (((int64_t)nc * DO + od) * HO + oh) * WO;
        for (int ow = 0; ow < WO; ++ow) {
          float m = -std::numeric_limits<float>::infinity();
          for (int kw = 0; kw < KW; ++kw) {
            const int iw = ow * SW - PW + kw;
            if (iw >= 0 && iw < WI) m = row[iw] > m ? row[iw] : m;
          }
          o[ow] = m;
        }
      }
    }
}
