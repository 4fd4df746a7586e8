// One input row into zero-padded, stride-deinterleaved phase rows, shared by the depthwise kernels
// (depthwise.cpp, pw_depthwise.cpp; inlined by codegen.render after the layer's constants WI, PL,
// SW, WPH).  Column j of the padded row goes to phase j % SW at j / SW; phase p of the row starts
// PSTRIDE floats after phase p - 1.
template <int PSTRIDE>
static inline void phase_row(const float* xr, float* dst) {
  // columns q with every phase's input inside the row: [QLO, QHI); the rest are padding
  constexpr int QLO = (PL + SW - 1) / SW;
  constexpr int QHI0 = (WI + PL) / SW;
  constexpr int QHI = QHI0 < WPH ? QHI0 : WPH;
  for (int q = 0; q < WPH; ++q) {
    if (q >= QLO && q < QHI) {
      q = QHI - 1;
      continue;
    }
    for (int p = 0; p < SW; ++p) {
      const int iw = q * SW + p - PL;
      dst[p * PSTRIDE + q] = iw >= 0 && iw < WI ? xr[iw] : 0.0f;
    }
  }
  if (SW == 1) {
    if (QHI > QLO) std::memcpy(dst + QLO, xr + QLO - PL, sizeof(float) * (QHI - QLO));
  } else {
    for (int q = QLO; q < QHI; ++q)
#pragma GCC unroll 4
      for (int p = 0; p < SW; ++p) dst[p * PSTRIDE + q] = xr[q * SW + p - PL];
  }
}
