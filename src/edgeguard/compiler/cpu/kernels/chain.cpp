// edgeguard chain runner (compiler/replay.py): one call repeats a compiled forward's recorded
// kernel calls, from the model's input to its output, so no Python runs between the kernels.
// Built once per target like a kernel; it calls the loaded kernels through their addresses.
//
// ops: nops records of OP_WORDS int64 each: kind, then the function's address, then its
// arguments (pointers and ints as int64, a float's bits in the low 32 bits of the last word):
//   0 zero: a[0] = pointer, a[1] = bytes, a[2] rows of them a[3] bytes apart (no function)
//   1 (p x 8, int, int): a sparse conv kernel (edgeguard_conv)
//   2 (p, p, int, int): a max pool
//   3 (p x 4, int, int): a depthwise conv, a classifier head
//   4 (p x 8, int, int, float): a fused 1x1 + depthwise conv
//   5 copy (no function): a[0] = dst, a[1] = src, a[2] bytes a row, a[3] rows a plane a[4] / a[5]
//     bytes apart in dst / src, a[6] planes a[7] / a[8] bytes apart
#include <cstdint>
#include <cstring>

constexpr int OP_WORDS = 13;

typedef void (*K1)(void*, void*, void*, void*, void*, void*, void*, void*, int, int);
typedef void (*K2)(void*, void*, int, int);
typedef void (*K3)(void*, void*, void*, void*, int, int);
typedef void (*K4)(void*, void*, void*, void*, void*, void*, void*, void*, int, int, float);

static inline void* P(int64_t v) { return reinterpret_cast<void*>(v); }

// Whether n floats at x hold a NaN or an Inf (all exponent bits set), whatever the math flags.
static bool non_finite(const float* x, int64_t n) {
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    any |= ((b & 0x7f800000u) == 0x7f800000u);
  }
  return any != 0;
}

// Returns 1 (and runs nothing) where check is set and x holds a NaN or an Inf, else copies x
// (xn floats) into staged, runs the ops, copies the output src (on floats) into dst, returns 0.
extern "C" int edgeguard_chain(const int64_t* ops, int nops, const float* x, float* staged,
                               int64_t xn, const float* src, float* dst, int64_t on, int check) {
  if (check && non_finite(x, xn)) return 1;
  std::memcpy(staged, x, (size_t)xn * sizeof(float));
  for (int i = 0; i < nops; ++i) {
    const int64_t* o = ops + (int64_t)i * OP_WORDS;
    const int64_t* a = o + 2;
    switch (o[0]) {
      case 0:
        for (int64_t r = 0; r < a[2]; ++r) std::memset(P(a[0] + r * a[3]), 0, (size_t)a[1]);
        break;
      case 1:
        reinterpret_cast<K1>(P(o[1]))(P(a[0]), P(a[1]), P(a[2]), P(a[3]), P(a[4]), P(a[5]),
                                       P(a[6]), P(a[7]), (int)a[8], (int)a[9]);
        break;
      case 2:
        reinterpret_cast<K2>(P(o[1]))(P(a[0]), P(a[1]), (int)a[2], (int)a[3]);
        break;
      case 3:
        reinterpret_cast<K3>(P(o[1]))(P(a[0]), P(a[1]), P(a[2]), P(a[3]), (int)a[4], (int)a[5]);
        break;
      case 5:
        for (int64_t p = 0; p < a[6]; ++p)
          for (int64_t r = 0; r < a[3]; ++r)
            std::memcpy(P(a[0] + p * a[7] + r * a[4]), P(a[1] + p * a[8] + r * a[5]),
                        (size_t)a[2]);
        break;
      case 4: {
        float f;
        const uint32_t bits = (uint32_t)a[10];
        std::memcpy(&f, &bits, 4);
        reinterpret_cast<K4>(P(o[1]))(P(a[0]), P(a[1]), P(a[2]), P(a[3]), P(a[4]), P(a[5]),
                                       P(a[6]), P(a[7]), (int)a[8], (int)a[9], f);
        break;
      }
    }
  }
  std::memcpy(dst, src, (size_t)on * sizeof(float));
  return 0;
}
