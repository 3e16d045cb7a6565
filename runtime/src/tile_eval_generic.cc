// Evaluators for the baseline instruction set: SSE2 on x86-64 (any x86-64 CPU), plain C++ elsewhere.
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "block_plan.h"

#define QUWEIT_ISA generic
#define QUWEIT_LANES 4
#define QUWEIT_BYTE_TOKENS 16
#include "simd_common.h"

namespace quweit {
namespace generic {
// 64 tokens' int16 values -> bit m set when q[m] > threshold.
QUWEIT_INLINE uint64_t gt_mask64(const int16_t* q, int16_t threshold) {
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

// 16 tokens' int16 values -> byte m = 0xFF when q[m] > threshold.
QUWEIT_INLINE Bytes gt_bytes(const int16_t* q, int16_t threshold) {
#if !defined(__SSE2__)
  Bytes out;
  for (int m = 0; m < kByteTokens; ++m) out[m] = q[m] > threshold ? 0xFF : 0;
  return out;
#else
  const __m128i t = _mm_set1_epi16(threshold);
  const __m128i lo = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)), t);
  const __m128i hi = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 8)), t);
  return (Bytes)_mm_packs_epi16(lo, hi);
#endif
}

// 16 int16 values against 16 thresholds -> byte m = 0xFF when q[m] > thresholds[m].
QUWEIT_INLINE Bytes gt_bytes(const int16_t* q, const int16_t* thresholds) {
#if !defined(__SSE2__)
  Bytes out;
  for (int m = 0; m < kByteTokens; ++m) out[m] = q[m] > thresholds[m] ? 0xFF : 0;
  return out;
#else
  const __m128i lo = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)),
                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(thresholds)));
  const __m128i hi = _mm_cmpgt_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 8)),
                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(thresholds + 8)));
  return (Bytes)_mm_packs_epi16(lo, hi);
#endif
}

// byte m = table[index[m]] (index < 16). The baseline has no byte shuffle (pshufb is SSSE3): lane by lane.
QUWEIT_INLINE Bytes lookup16(const uint8_t* table, Bytes index) {
  Bytes out;
  for (int m = 0; m < kByteTokens; ++m) out[m] = table[index[m] & 15];
  return out;
}

// acc lane m (token m) += S[pattern[m]], S[p] the int32 whose little-endian bytes are planes[16 k + p].
QUWEIT_INLINE void add_pattern_sums(Bytes pattern, const uint8_t* planes, Lanes* acc) {
  for (int m = 0; m < kByteTokens; ++m) {
    const int p = pattern[m] & 15;
    const uint32_t sum = planes[p] | uint32_t{planes[16 + p]} << 8 | uint32_t{planes[32 + p]} << 16 |
                         uint32_t{planes[48 + p]} << 24;
    acc[m / kLanes][m % kLanes] += static_cast<int32_t>(sum);
  }
}
}  // namespace generic
}  // namespace quweit

#include "tile_io_impl.h"
#include "bitslice_eval_impl.h"
#include "byteslice_eval_impl.h"
#include "direct_eval_impl.h"

namespace quweit {
const IsaKernels& generic_kernels() {
  static const IsaKernels kernels = {
      "generic",
      {&generic::evaluate_tile<1>, &generic::evaluate_tile<2>, &generic::evaluate_tile<4>, &generic::evaluate_tile<8>},
      2,
      &generic::kDirectKernels,
      &generic::kByteSliceKernels};
  return kernels;
}
}  // namespace quweit
