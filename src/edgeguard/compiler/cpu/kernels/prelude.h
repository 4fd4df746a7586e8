// The system headers the kernel templates include, precompiled once per target (GCC) so that each
// kernel's compile skips parsing them; every template still includes what it uses itself.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
