// Byte-sliced evaluation of up to kByteTokens tokens; included once per instruction set by
// tile_eval_<isa>.cc after simd_common.h and the ISA's byte primitives (gt_bytes, lookup16,
// add_pattern_sums).
//
// Layout (why it is fast for few tokens): every thermometer bit and LUT output is a vector of
// kByteTokens bytes, byte m = 0xFF when the bit is 1 for token m. A LUT's address for all tokens is
// formed with one AND and one OR per input, its truth table is indexed per token by 16-entry byte
// shuffles (block_layouts.h), and the conditional sums take four LUT outputs at a time as a 4-bit
// pattern that indexes precomputed partial sums (again byte shuffles, one per byte of the int32). A
// tile costs about 30 vector instructions per LUT whether it holds 1 or kByteTokens tokens: cheaper
// than a 64-token bit-sliced tile (over 100 per LUT) for a few dozen tokens, dearer than the direct
// path (about 18 scalar instructions per LUT and token) for one or two.
#ifndef QUWEIT_BYTE_TOKENS
#error "define QUWEIT_BYTE_TOKENS before including direct_eval_impl.h"
#endif

#include "block_plan.h"

namespace quweit {
namespace QUWEIT_ISA {

static_assert(kByteTokens == QUWEIT_BYTE_TOKENS, "the ISA's Bytes type must match QUWEIT_BYTE_TOKENS");
static_assert(kByteTokens % kLanes == 0, "a direct tile is a whole number of int32 vectors");

// Scratch: two bit buffers of max_layer_bits * kByteTokens bytes (a layer's input and output), then
// quantized inputs and staged outputs (kLanes rows of kByteTokens each), each 64-byte aligned.
struct ByteScratch {
  uint8_t* bits[2];
  int16_t* q;
  float* y;
};

size_t byteslice_scratch_bytes(const BlockPlan& plan) {
  const size_t bits = 2u * static_cast<size_t>(plan.max_layer_bits) * kByteTokens;
  return bits + kLanes * kByteTokens * (sizeof(int16_t) + sizeof(float)) + 4 * 64;
}

QUWEIT_INLINE ByteScratch byte_scratch(const BlockPlan& plan, void* scratch) {
  ByteScratch s;
  const size_t bytes = static_cast<size_t>(plan.max_layer_bits) * kByteTokens;
  s.bits[0] = align64(static_cast<uint8_t*>(scratch));
  s.bits[1] = align64(s.bits[0] + bytes);
  s.q = reinterpret_cast<int16_t*>(align64(s.bits[1] + bytes));
  s.y = reinterpret_cast<float*>(align64(reinterpret_cast<uint8_t*>(s.q + kLanes * kByteTokens)));
  return s;
}

QUWEIT_INLINE Bytes load_bytes(const uint8_t* p) { return *reinterpret_cast<const Bytes*>(p); }

// Spec 3.1 + 3.2 for `count` tokens: quantize kLanes features x kLanes tokens at a time (rows of X
// transposed so tokens fill the lanes; missing tokens read as zeros), then one byte-mask vector per
// (feature, threshold) at bits[(i * T + t) * kByteTokens].
void byteslice_encode(const BlockPlan& plan, const float* x, int64_t begin, int64_t count, void* scratch) {
  const ByteScratch s = byte_scratch(plan, scratch);
  const int d_in = plan.in_features;
  const int t_per = plan.thresholds_per_feature;
  for (int i0 = 0; i0 < d_in; i0 += kLanes) {
    const int nb = d_in - i0 < kLanes ? d_in - i0 : kLanes;
    quantize_transposed(plan, x, begin, count, i0, nb, s.q, kByteTokens, kByteTokens);
    for (int ii = 0; ii < nb; ++ii) {
      const int i = i0 + ii;
      for (int t = 0; t < t_per; ++t)
        *reinterpret_cast<Bytes*>(s.bits[0] + static_cast<int64_t>(i * t_per + t) * kByteTokens) =
            gt_bytes(s.q + ii * kByteTokens, plan.thresholds[i * t_per + t]);
    }
  }
}

// Spec 3.3 for one LUT (global row r) over the input bit vectors `in`: address bits 0-3 in `low`, 4-7 in
// `high` (one byte per token), then the shuffle tables of block_layouts.h.
template <int N>
QUWEIT_INLINE Bytes byteslice_lut(const BlockPlan& plan, const uint8_t* in, int64_t r) {
  const int32_t* map = plan.mapping + r * N;
  const uint8_t* table = plan.lut_tables + r * plan.lut_bytes;
  Bytes low = load_bytes(in + static_cast<int64_t>(map[0]) * kByteTokens) & 1;
  for (int l = 1; l < (N < 4 ? N : 4); ++l)
    low |= load_bytes(in + static_cast<int64_t>(map[l]) * kByteTokens) & bit_mask(l);
  if constexpr (N <= 4) {
    return lookup16(table, low);
  } else {
    Bytes high = load_bytes(in + static_cast<int64_t>(map[4]) * kByteTokens) & 1;
    for (int l = 5; l < N; ++l)
      high |= load_bytes(in + static_cast<int64_t>(map[l]) * kByteTokens) & bit_mask(l - 4);
    alignas(16) static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 0, 0, 0, 0, 0, 0, 0, 0};
    const Bytes candidates = lookup16(table, low);
    const Bytes pick = lookup16(kBit, high);
    if constexpr (N < 8) {
      return (Bytes)((candidates & pick) == pick);
    } else {
      alignas(16) static const uint8_t kBitHigh[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128};
      const Bytes more = lookup16(table + 16, low) & lookup16(kBitHigh, high);
      return (Bytes)(((candidates & pick) | more) != 0);
    }
  }
}

template <int N>
void byteslice_layer_n(const BlockPlan& plan, int k, const uint8_t* in, uint8_t* out, int64_t j_begin, int64_t j_end) {
  const int64_t first = plan.layer_offsets[k];
  for (int64_t j = j_begin; j < j_end; ++j)
    *reinterpret_cast<Bytes*>(out + j * kByteTokens) = byteslice_lut<N>(plan, in, first + j);
}

// LUTs [j_begin, j_end) of hidden layer k (not the last): bits[k % 2] -> bits[(k + 1) % 2], for all
// kByteTokens token slots at once (`count` is not needed).
void byteslice_layer(const BlockPlan& plan, int k, void* scratch, int64_t count, int64_t j_begin, int64_t j_end) {
  (void)count;
  const ByteScratch s = byte_scratch(plan, scratch);
  const uint8_t* in = s.bits[k % 2];
  uint8_t* out = s.bits[(k + 1) % 2];
  switch (plan.lut_inputs) {
    case 1: return byteslice_layer_n<1>(plan, k, in, out, j_begin, j_end);
    case 2: return byteslice_layer_n<2>(plan, k, in, out, j_begin, j_end);
    case 3: return byteslice_layer_n<3>(plan, k, in, out, j_begin, j_end);
    case 4: return byteslice_layer_n<4>(plan, k, in, out, j_begin, j_end);
    case 5: return byteslice_layer_n<5>(plan, k, in, out, j_begin, j_end);
    case 6: return byteslice_layer_n<6>(plan, k, in, out, j_begin, j_end);
    case 7: return byteslice_layer_n<7>(plan, k, in, out, j_begin, j_end);
    default: return byteslice_layer_n<8>(plan, k, in, out, j_begin, j_end);
  }
}

// Spec 3.3 (last layer) + 3.4 + 3.5 for outputs [o_begin, o_end): each output's LUTs are evaluated and
// summed four at a time, dequantized into the staging rows y_stage[output][token], and kLanes outputs x
// kLanes tokens are transposed into rows of Y.
template <int N>
void byteslice_outputs_n(const BlockPlan& plan, const uint8_t* in, float* y, int64_t begin, int64_t count,
                      int64_t o_begin, int64_t o_end, float* y_stage) {
  constexpr int kChunks = kByteTokens / kLanes;
  const int64_t first = plan.layer_offsets[plan.num_layers - 1];
  const int g_size = plan.group_size;
  const int d_out = plan.out_features;
  const int groups = static_cast<int>((count + kLanes - 1) / kLanes);
  for (int64_t o0 = o_begin; o0 < o_end; o0 += kLanes) {
    const int ob = o_end - o0 < kLanes ? static_cast<int>(o_end - o0) : kLanes;
    for (int oo = 0; oo < ob; ++oo) {
      const int64_t o = o0 + oo;
      Lanes acc[kChunks] = {};
      for (int j = 0; j < plan.sum_groups; ++j) {
        const int64_t row = first + o * g_size + 4 * j;
        const int width = g_size - 4 * j < 4 ? g_size - 4 * j : 4;
        Bytes pattern = byteslice_lut<N>(plan, in, row) & 1;
        for (int b = 1; b < width; ++b) pattern |= byteslice_lut<N>(plan, in, row + b) & bit_mask(b);
        add_pattern_sums(pattern, plan.sum_planes + (o * plan.sum_groups + j) * 64, acc);
      }
      const float scale = plan.output_scale[o];
      for (int c = 0; c < groups; ++c)
        *reinterpret_cast<Floats*>(y_stage + oo * kByteTokens + c * kLanes) = __builtin_convertvector(acc[c], Floats) * scale;
    }
    store_transposed(y_stage, kByteTokens, y, d_out, o0, ob, begin, count);
  }
}

void byteslice_outputs(const BlockPlan& plan, float* y, int64_t begin, int64_t count, int64_t o_begin, int64_t o_end,
                    const void* shared_scratch, void* own_scratch) {
  const uint8_t* in = byte_scratch(plan, const_cast<void*>(shared_scratch)).bits[(plan.num_layers - 1) % 2];
  float* stage = byte_scratch(plan, own_scratch).y;
  switch (plan.lut_inputs) {
    case 1: return byteslice_outputs_n<1>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 2: return byteslice_outputs_n<2>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 3: return byteslice_outputs_n<3>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 4: return byteslice_outputs_n<4>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 5: return byteslice_outputs_n<5>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 6: return byteslice_outputs_n<6>(plan, in, y, begin, count, o_begin, o_end, stage);
    case 7: return byteslice_outputs_n<7>(plan, in, y, begin, count, o_begin, o_end, stage);
    default: return byteslice_outputs_n<8>(plan, in, y, begin, count, o_begin, o_end, stage);
  }
}

// The whole block for `count` <= kByteTokens tokens on one thread.
void byteslice_tile(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count, void* scratch) {
  byteslice_encode(plan, x, begin, count, scratch);
  for (int k = 0; k + 1 < plan.num_layers; ++k) byteslice_layer(plan, k, scratch, count, 0, plan.layer_sizes[k]);
  byteslice_outputs(plan, y, begin, count, 0, plan.out_features, scratch, scratch);
}

const PathKernels kByteSliceKernels = {kByteTokens,      &byteslice_scratch_bytes, &byteslice_tile,
                                       &byteslice_encode, &byteslice_layer,         &byteslice_outputs};

}  // namespace QUWEIT_ISA
}  // namespace quweit
