// Vector types and element-wise steps shared by the per-ISA evaluators (tile_eval_impl.h,
// direct_eval_impl.h). Included once per ISA translation unit after QUWEIT_ISA and QUWEIT_LANES are
// defined; everything lands in namespace quweit::QUWEIT_ISA, compiled with that ISA's flags.
#ifndef QUWEIT_ISA
#error "define QUWEIT_ISA before including simd_common.h"
#endif
#ifndef QUWEIT_LANES
#error "define QUWEIT_LANES (int32 lanes of the ISA's vectors) before including simd_common.h"
#endif

#include <cstddef>
#include <cstdint>

#include "block_plan.h"

namespace quweit {
namespace QUWEIT_ISA {

#define QUWEIT_INLINE inline __attribute__((always_inline))

constexpr int kLanes = QUWEIT_LANES;
typedef int32_t Lanes __attribute__((vector_size(4 * kLanes), may_alias));
typedef float Floats __attribute__((vector_size(4 * kLanes), may_alias));
typedef int16_t Shorts __attribute__((vector_size(2 * kLanes), may_alias));
typedef int32_t UnalignedLanes __attribute__((vector_size(4 * kLanes), may_alias, aligned(4)));
typedef float UnalignedFloats __attribute__((vector_size(4 * kLanes), may_alias, aligned(4)));
typedef int16_t UnalignedShorts __attribute__((vector_size(2 * kLanes), may_alias, aligned(2)));

#ifdef QUWEIT_BYTE_TOKENS
// The byte-sliced path's vectors (byte m belongs to token m of the tile); the direct path uses the
// same width for its per-feature thermometer bytes.
constexpr int kByteTokens = QUWEIT_BYTE_TOKENS;
typedef uint8_t Bytes __attribute__((vector_size(kByteTokens), may_alias));
typedef int16_t Words __attribute__((vector_size(2 * kByteTokens), may_alias));

// A vector of kByteTokens copies of `byte` (a scalar operand would be an int to GCC, which refuses to
// narrow it when it cannot prove the value fits, as at -O1). Read from a table of the eight one-bit
// masks when `byte` is one: a memset into a vector in an inner loop stays a store and a reload at -O3.
#define QUWEIT_R8(v) v, v, v, v, v, v, v, v
#define QUWEIT_R64(v) QUWEIT_R8(v), QUWEIT_R8(v), QUWEIT_R8(v), QUWEIT_R8(v), QUWEIT_R8(v), QUWEIT_R8(v), \
    QUWEIT_R8(v), QUWEIT_R8(v)
alignas(64) inline constexpr uint8_t kBitMasks[8][64] = {
    {QUWEIT_R64(1)}, {QUWEIT_R64(2)}, {QUWEIT_R64(4)}, {QUWEIT_R64(8)},
    {QUWEIT_R64(16)}, {QUWEIT_R64(32)}, {QUWEIT_R64(64)}, {QUWEIT_R64(128)}};
#undef QUWEIT_R64
#undef QUWEIT_R8
static_assert(kByteTokens <= 64, "kBitMasks rows are 64 bytes");

// `1 << bit` in every byte (bit in 0..7).
QUWEIT_INLINE Bytes bit_mask(int bit) { return *reinterpret_cast<const Bytes*>(kBitMasks[bit]); }

#endif

template <typename T>
QUWEIT_INLINE T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// Spec 3.1 for one element: NaN -> 0, clamp, round half to even (exact via the 1.5 * 2^23 trick, since
// |value| <= 2^15 after clamping), one binary32 multiplication (the build disables FMA contraction).
QUWEIT_INLINE int16_t quantize(float x, float scale, float qmin, float qmax) {
  float p = x * scale;
  p = (p == p) ? p : 0.0f;
  p = p < qmin ? qmin : p;
  p = p > qmax ? qmax : p;
  const float magic = 12582912.0f;
  return static_cast<int16_t>(static_cast<int32_t>((p + magic) - magic));
}

// The same for kLanes elements at once (bit for bit: the same operations, lane by lane).
QUWEIT_INLINE Shorts quantize(Floats x, Floats scale, Floats qmin, Floats qmax) {
  const Floats magic = Floats{} + 12582912.0f;
  Floats p = x * scale;
  p = p == p ? p : Floats{};  // NaN -> +0
  p = p < qmin ? qmin : p;
  p = p > qmax ? qmax : p;
  return __builtin_convertvector(__builtin_convertvector((p + magic) - magic, Lanes), Shorts);
}

// rows[i] (lane j) -> rows[j] (lane i): a kLanes x kLanes transpose by repeated interleaving, unless the
// ISA provides a faster one (QUWEIT_NATIVE_TRANSPOSE).
#ifndef QUWEIT_NATIVE_TRANSPOSE
QUWEIT_INLINE void transpose(Floats rows[kLanes]) {
  // Interleave the first halves (low) and the second halves (high) of rows i and i + kLanes / 2.
#if QUWEIT_LANES == 4
  const Lanes low = {0, 4, 1, 5};
  const Lanes high = {2, 6, 3, 7};
#elif QUWEIT_LANES == 8
  const Lanes low = {0, 8, 1, 9, 2, 10, 3, 11};
  const Lanes high = {4, 12, 5, 13, 6, 14, 7, 15};
#elif QUWEIT_LANES == 16
  const Lanes low = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
  const Lanes high = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
#else
#error "no interleave masks for this QUWEIT_LANES"
#endif
  for (int round = 1; round < kLanes; round *= 2) {
    Floats next[kLanes];
    for (int i = 0; i < kLanes / 2; ++i) {
      next[2 * i] = __builtin_shuffle(rows[i], rows[i + kLanes / 2], low);
      next[2 * i + 1] = __builtin_shuffle(rows[i], rows[i + kLanes / 2], high);
    }
    for (int i = 0; i < kLanes; ++i) rows[i] = next[i];
  }
}
#endif

}  // namespace QUWEIT_ISA
}  // namespace quweit
