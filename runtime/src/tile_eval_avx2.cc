// Tile evaluators compiled for AVX2 (this file only is built with -mavx2); chosen at run time.
#include <immintrin.h>

#include "block_plan.h"

#define QUWEIT_ISA avx2
#define QUWEIT_LANES 8

namespace quweit {
namespace avx2 {
inline __attribute__((always_inline)) uint64_t gt_mask64(const int16_t* q, int16_t threshold) {
  const __m256i t = _mm256_set1_epi16(threshold);
  uint64_t mask = 0;
  for (int j = 0; j < 2; ++j) {
    const __m256i lo = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * j)), t);
    const __m256i hi = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * j + 16)), t);
    // packs works per 128-bit lane: reorder quadwords to token order before taking the byte signs.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi16(lo, hi), 0xD8);
    mask |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_epi8(packed))) << (32 * j);
  }
  return mask;
}
}  // namespace avx2
}  // namespace quweit

#include "tile_eval_impl.h"

namespace quweit {
const IsaKernels& avx2_kernels() {
  static const IsaKernels kernels = {
      "avx2", {&avx2::evaluate_tile<1>, &avx2::evaluate_tile<2>, &avx2::evaluate_tile<4>, &avx2::evaluate_tile<8>}};
  return kernels;
}
}  // namespace quweit
