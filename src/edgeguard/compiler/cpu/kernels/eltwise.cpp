// edgeguard CPU elementwise sum: out = act(a + b) for float32 tensors of N floats a sample, b of
// the same batch (BB = 1) or one sample broadcast over it (BB = 0: a constant field, the
// contribution of channels removed by shrinking), act a ReLU where RELU (NaN kept, as PyTorch's).
// edgeguard.compiler.eltwise writes the header in place of the include of eg_layer.h.  The
// signature has a fourth, unused pointer so that the chain runner (chain.cpp) calls it as it
// calls the other generated kernels of four pointers.
#include <cstdint>

#include "eg_layer.h"

extern "C" void edgeguard_eltwise(const float* a, const float* b, const float* unused, float* out,
                                  int batch, int nthreads) {
  (void)unused;
  constexpr int64_t CH = 4096;  // floats a task: 16 KB of each operand
  constexpr int64_t NCH = (N + CH - 1) / CH;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t t = 0; t < (int64_t)batch * NCH; ++t) {
    const int64_t n = t / NCH, i0 = t % NCH * CH, i1 = i0 + CH < N ? i0 + CH : N;
    const float* pa = a + n * N;
    const float* pb = b + (BB ? n * N : 0);
    float* po = out + n * N;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float v = pa[i] + pb[i];
      po[i] = RELU && v < 0.f ? 0.f : v;
    }
  }
}
