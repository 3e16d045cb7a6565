// Reading a tile's inputs token-minor and writing its outputs token-major, shared by the bit-sliced
// and byte-sliced evaluators; included per ISA after simd_common.h and the ISA's transpose.
#ifndef QUWEIT_ISA
#error "define QUWEIT_ISA and include simd_common.h before including tile_io_impl.h"
#endif

#include "block_plan.h"

namespace quweit {
namespace QUWEIT_ISA {

// Spec 3.1 for features [i0, i0 + nb) of tokens [begin, begin + count), transposed: q[ii * stride + m]
// is feature i0 + ii of token begin + m, for m < slots (a multiple of kLanes; absent tokens read as
// zeros). Whole blocks of kLanes features go kLanes tokens at a time through a transpose and the
// vector quantization; a last partial block is quantized element by element.
QUWEIT_INLINE void quantize_transposed(const BlockPlan& plan, const float* x, int64_t begin, int64_t count, int i0,
                                       int nb, int16_t* q, int64_t stride, int64_t slots) {
  static const float zeros[kLanes] = {};
  const int64_t d_in = plan.in_features;
  const Floats qmin = Floats{} + plan.qmin, qmax = Floats{} + plan.qmax;
  for (int64_t m0 = 0; m0 < slots; m0 += kLanes) {
    if (m0 >= count) {
      for (int ii = 0; ii < nb; ++ii) *reinterpret_cast<UnalignedShorts*>(q + ii * stride + m0) = Shorts{};
      continue;
    }
    if (nb == kLanes) {
      Floats rows[kLanes];
      for (int j = 0; j < kLanes; ++j) {
        const float* row = m0 + j < count ? x + (begin + m0 + j) * d_in + i0 : zeros;
        rows[j] = *reinterpret_cast<const UnalignedFloats*>(row);
      }
      transpose(rows);
      for (int ii = 0; ii < kLanes; ++ii)
        *reinterpret_cast<UnalignedShorts*>(q + ii * stride + m0) =
            quantize(rows[ii], Floats{} + plan.input_scale[i0 + ii], qmin, qmax);
    } else {
      for (int ii = 0; ii < nb; ++ii)
        for (int j = 0; j < kLanes; ++j) {
          const float value = m0 + j < count ? x[(begin + m0 + j) * d_in + i0 + ii] : 0.0f;
          q[ii * stride + m0 + j] = quantize(value, plan.input_scale[i0 + ii], plan.qmin, plan.qmax);
        }
    }
  }
}

// Outputs [o0, o0 + nb) (nb <= kLanes) of tokens [begin, begin + count) from the staging rows
// stage[oo * stride + m] into Y: kLanes tokens at a time through a transpose.
QUWEIT_INLINE void store_transposed(const float* stage, int64_t stride, float* y, int64_t d_out, int64_t o0, int nb,
                                    int64_t begin, int64_t count) {
  for (int64_t m0 = 0; m0 < count; m0 += kLanes) {
    Floats rows[kLanes];
    for (int oo = 0; oo < kLanes; ++oo)
      rows[oo] = *reinterpret_cast<const UnalignedFloats*>(stage + (oo < nb ? oo : 0) * stride + m0);
    transpose(rows);
    const int tokens = count - m0 < kLanes ? static_cast<int>(count - m0) : kLanes;
    for (int j = 0; j < tokens; ++j) {
      float* row = y + (begin + m0 + j) * d_out + o0;
      if (nb == kLanes) {
        *reinterpret_cast<UnalignedFloats*>(row) = rows[j];
      } else {
        for (int oo = 0; oo < nb; ++oo) row[oo] = rows[j][oo];
      }
    }
  }
}

}  // namespace QUWEIT_ISA
}  // namespace quweit
