// One output row of a depthwise filter from phase rows, shared by the depthwise kernels
// (depthwise.cpp, pw_depthwise.cpp; inlined by codegen.render after the layer's constants KH, KW,
// SW, WO, RELU, CAP, VL, NT, T and the vector helpers vf/ld/st).  ``top`` is the first phase row the
// output row reads; padded row kh of it starts RSTRIDE floats after row kh - 1 and phase p of a
// row PSTRIDE floats after phase p - 1.  Tiles of T outputs keep NT accumulator vectors in
// registers; a tail tile's lanes past WO read the next phase/row (or the slack): never stored.
// the activation after the depthwise taps: none, a ReLU, a ReLU capped at CAP where CAP > 0
static inline vf dw_act(vf v) {
  const vf zero = {};
  if (!RELU) return v;
  v = v < zero ? zero : v;
  if (CAP > 0.f) v = v > CAP ? zero + CAP : v;
  return v;
}

template <int RSTRIDE, int PSTRIDE>
static inline __attribute__((always_inline)) void dw_row(const float* top, const float* wk,
                                                         float bias, float* dst) {
  const vf zero = {};
  for (int ow0 = 0; ow0 < WO; ow0 += T) {
    vf acc[NT];
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) acc[i] = zero + bias;
#pragma GCC unroll 8
    for (int kh = 0; kh < KH; ++kh) {
      const float* row = top + kh * RSTRIDE + ow0;
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const vf wv = zero + wk[kh * KW + kw];
        const float* src = row + (kw % SW) * PSTRIDE + kw / SW;
#pragma GCC unroll 8
        for (int i = 0; i < NT; ++i) acc[i] += wv * ld(src + i * VL);
      }
    }
    float* d = dst + ow0;
    if (ow0 + T <= WO) {
#pragma GCC unroll 8
      for (int i = 0; i < NT; ++i) st(d + i * VL, dw_act(acc[i]));
    } else {
      float tail[T];
#pragma GCC unroll 8
      for (int i = 0; i < NT; ++i) st(tail + i * VL, dw_act(acc[i]));
      for (int t = 0; t < WO - ow0; ++t) d[t] = tail[t];
    }
  }
}
