// Evaluators compiled for AVX2 (this file only is built with -mavx2); chosen at run time.
#include <immintrin.h>

#include "block_plan.h"

#define QUWEIT_ISA avx2
#define QUWEIT_LANES 8
#define QUWEIT_BYTE_TOKENS 32
#define QUWEIT_NATIVE_TRANSPOSE
#define QUWEIT_PATTERN_SUMS
#include "simd_common.h"

namespace quweit {
namespace avx2 {

// 64 tokens' int16 values -> bit m set when q[m] > threshold.
QUWEIT_INLINE uint64_t gt_mask64(const int16_t* q, int16_t threshold) {
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

// 32 tokens' int16 values -> byte m = 0xFF when q[m] > threshold.
QUWEIT_INLINE Bytes gt_bytes(const int16_t* q, int16_t threshold) {
  const __m256i t = _mm256_set1_epi16(threshold);
  const __m256i lo = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)), t);
  const __m256i hi = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16)), t);
  return (Bytes)_mm256_permute4x64_epi64(_mm256_packs_epi16(lo, hi), 0xD8);
}

// 32 int16 values against 32 thresholds -> byte m = 0xFF when q[m] > thresholds[m].
QUWEIT_INLINE Bytes gt_bytes(const int16_t* q, const int16_t* thresholds) {
  const __m256i lo = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)),
                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(thresholds)));
  const __m256i hi = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16)),
                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(thresholds + 16)));
  return (Bytes)_mm256_permute4x64_epi64(_mm256_packs_epi16(lo, hi), 0xD8);
}

// byte m = table[index[m]] for index[m] < 16 (pshufb looks up within each 128-bit lane, so the table
// is in both).
QUWEIT_INLINE Bytes lookup16(const uint8_t* table, Bytes index) {
  const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
  return (Bytes)_mm256_shuffle_epi8(t, (__m256i)index);
}

// acc[c] lane j += S[pattern[8 c + j]], S[p] the int32 whose little-endian bytes are planes[16 k + p].
// The in-lane byte/word interleaves that assemble the int32s visit tokens in the order of the dword
// permutation applied first, which makes the result come out in token order.
QUWEIT_INLINE void add_pattern_sums(Bytes pattern, const uint8_t* planes, Lanes* acc) {
  const __m256i p = _mm256_permutevar8x32_epi32((__m256i)pattern, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  __m256i b[4];
  for (int k = 0; k < 4; ++k)
    b[k] = _mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(planes + 16 * k))), p);
  const __m256i w01l = _mm256_unpacklo_epi8(b[0], b[1]), w01h = _mm256_unpackhi_epi8(b[0], b[1]);
  const __m256i w23l = _mm256_unpacklo_epi8(b[2], b[3]), w23h = _mm256_unpackhi_epi8(b[2], b[3]);
  acc[0] += (Lanes)_mm256_unpacklo_epi16(w01l, w23l);
  acc[1] += (Lanes)_mm256_unpackhi_epi16(w01l, w23l);
  acc[2] += (Lanes)_mm256_unpacklo_epi16(w01h, w23h);
  acc[3] += (Lanes)_mm256_unpackhi_epi16(w01h, w23h);
}

// 32 bits (bit m = token m) -> byte m = 0xFF when bit m is set: each byte of the word is copied to the
// 8 bytes of its tokens (within 128-bit lanes), then each byte tests its own bit.
QUWEIT_INLINE Bytes expand_bits(uint32_t word) {
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(word)),
                                             _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201));
  return (Bytes)_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
}

// 8 x 8 floats: rows[i] lane j -> rows[j] lane i (unpack, shuffle within 128-bit lanes, then swap halves).
QUWEIT_INLINE void transpose(Floats rows[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps((__m256)rows[2 * i], (__m256)rows[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps((__m256)rows[2 * i], (__m256)rows[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    rows[i] = (Floats)_mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    rows[i + 4] = (Floats)_mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

}  // namespace avx2
}  // namespace quweit

#include "tile_io_impl.h"
#include "bitslice_eval_impl.h"
#include "byteslice_eval_impl.h"
#include "direct_eval_impl.h"

namespace quweit {
const IsaKernels& avx2_kernels() {
  static const IsaKernels kernels = {
      "avx2",
      {&avx2::evaluate_tile<1>, &avx2::evaluate_tile<2>, &avx2::evaluate_tile<4>, &avx2::evaluate_tile<8>},
      4,
      &avx2::kDirectKernels,
      &avx2::kByteSliceKernels};
  return kernels;
}
}  // namespace quweit
