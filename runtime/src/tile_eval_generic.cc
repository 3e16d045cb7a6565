// Tile evaluators for the baseline instruction set: SSE2 on x86-64 (any x86-64 CPU), plain C++ elsewhere.
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "block_plan.h"

#define QUWEIT_ISA generic
#define QUWEIT_LANES 4

namespace quweit {
namespace generic {
// 64 tokens' int16 values -> bit m set when q[m] > threshold.
inline __attribute__((always_inline)) uint64_t gt_mask64(const int16_t* q, int16_t threshold) {
#if !defined(__SSE2__)
  uint64_t mask = 0;
  for (int m = 0; m < 64; ++m) mask |= static_cast<uint64_t>(q[m] > threshold) << m;
  return mask;
#else
  const __m128i t = _mm_set1_epi16(threshold);
  uint64_t mask = 0;
  for (int j = 0; j < 4; ++j) {
    const __m128i lo = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * j)), t);
    const __m128i hi = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * j + 8)), t);
    mask |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(_mm_packs_epi16(lo, hi)))) << (16 * j);
  }
  return mask;
#endif
}
}  // namespace generic
}  // namespace quweit

#include "tile_eval_impl.h"

namespace quweit {
const IsaKernels& generic_kernels() {
  static const IsaKernels kernels = {
      "generic", {&generic::evaluate_tile<1>, &generic::evaluate_tile<2>, &generic::evaluate_tile<4>,
                  &generic::evaluate_tile<8>}};
  return kernels;
}
}  // namespace quweit
