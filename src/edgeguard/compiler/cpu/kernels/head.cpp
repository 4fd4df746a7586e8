// edgeguard CPU classifier head: global average pooling, flatten and a dense linear layer in one
// call (the tail of most CNN classifiers), one per layer and input size.
// edgeguard.compiler.head writes the layer's header in place of the include of eg_layer.h:
// C channels of HW positions each, M outputs.  out[n, m] = b[m] + sum_c w[m, c] * mean(x[n, c]).
#include <cstdint>

#include "eg_layer.h"

extern "C" void edgeguard_head(const float* x, const float* w, const float* b, float* out,
                               int batch, int nthreads) {
  float* pooled = new float[(int64_t)batch * C];
  // the threads take channels, then outputs; all of them even for a small head, so that the
  // next call's kernel finds its team awake
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < (int64_t)batch * C; ++nc) {
      const float* p = x + nc * HW;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int i = 0; i < HW; ++i) s += p[i];
      pooled[nc] = s * (1.f / HW);
    }
#pragma omp for collapse(2) schedule(static)
    for (int n = 0; n < batch; ++n)
      for (int m = 0; m < M; ++m) {
        const float* wr = w + (int64_t)m * C;
        const float* pr = pooled + (int64_t)n * C;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; ++c) s += wr[c] * pr[c];
        out[(int64_t)n * M + m] = s + b[m];
      }
  }
  delete[] pooled;
}
