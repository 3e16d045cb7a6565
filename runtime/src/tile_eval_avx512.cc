// Bit-sliced evaluators compiled for AVX-512 F+BW (this file only is built with those flags); chosen at
// run time. The direct and byte-sliced paths of AVX-512 CPUs are the AVX2 ones (every such CPU has AVX2).
#include <immintrin.h>

#include "block_plan.h"

#define QUWEIT_ISA avx512
#define QUWEIT_LANES 16
#include "simd_common.h"

namespace quweit {
namespace avx512 {
QUWEIT_INLINE uint64_t gt_mask64(const int16_t* q, int16_t threshold) {
  const __m512i t = _mm512_set1_epi16(threshold);
  const uint64_t lo = _mm512_cmpgt_epi16_mask(_mm512_loadu_si512(q), t);
  const uint64_t hi = _mm512_cmpgt_epi16_mask(_mm512_loadu_si512(q + 32), t);
  return lo | (hi << 32);
}
}  // namespace avx512
}  // namespace quweit

#include "tile_io_impl.h"
#include "bitslice_eval_impl.h"

namespace quweit {
const IsaKernels& avx512_kernels() {
  static const IsaKernels kernels = {
      "avx512",
      {&avx512::evaluate_tile<1>, &avx512::evaluate_tile<2>, &avx512::evaluate_tile<4>, &avx512::evaluate_tile<8>},
      8,
      avx2_kernels().direct,
      avx2_kernels().byteslice};
  return kernels;
}
}  // namespace quweit
