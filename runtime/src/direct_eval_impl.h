// Direct evaluation, one token at a time; included once per instruction set by tile_eval_<isa>.cc
// after simd_common.h and the ISA's gt_bytes (it compares kByteTokens features per vector).
//
// Why it is fast for one token: the token's thermometer bits are bytes, held as n copies where copy l
// holds bit << l (block_layouts.h), built 32 features at a time with vector compares. A LUT's address
// is then the OR of n byte loads, and its output one shift of the truth table: about 2n + 5 scalar
// instructions per LUT, nothing spent on other tokens. The last layer's LUTs are evaluated in an order
// that puts 16 outputs side by side, so the conditional sums and the dequantization are vector
// operations over 16 outputs, written straight into the token's row of Y.
#ifndef QUWEIT_BYTE_TOKENS
#error "define QUWEIT_BYTE_TOKENS before including direct_eval_impl.h"
#endif

#include "block_plan.h"

namespace quweit {
namespace QUWEIT_ISA {

typedef int32_t Ints16 __attribute__((vector_size(64), may_alias, aligned(4)));
typedef float Floats16 __attribute__((vector_size(64), may_alias, aligned(4)));

// Scratch: two sets of n copies (a layer's input and output bits), the token's quantized inputs, and
// the last layer's output bits (int32 0/1, ready for vector sums), each 64-byte aligned.
struct DirectScratch {
  uint8_t* copies[2];
  int16_t* q;
  int32_t* bits;
};

size_t direct_copies_bytes(const BlockPlan& plan) {
  if (plan.direct_rows == 0) return 0;  // path not offered for this block
  int64_t widest = 0;
  for (int k = 0; k < plan.num_layers; ++k) widest = plan.direct_copy_bytes[k] > widest ? plan.direct_copy_bytes[k] : widest;
  return static_cast<size_t>(plan.lut_inputs * widest);
}

size_t direct_scratch_bytes(const BlockPlan& plan) {
  return 2 * direct_copies_bytes(plan) + plan.direct_features * sizeof(int16_t) +
         static_cast<size_t>(plan.direct_outputs) * plan.group_size * sizeof(int32_t) + 4 * 64;
}

QUWEIT_INLINE DirectScratch direct_scratch(const BlockPlan& plan, void* scratch) {
  const size_t copies = direct_copies_bytes(plan);
  DirectScratch s;
  s.copies[0] = align64(static_cast<uint8_t*>(scratch));
  s.copies[1] = align64(s.copies[0] + copies);
  s.q = reinterpret_cast<int16_t*>(align64(s.copies[1] + copies));
  s.bits = reinterpret_cast<int32_t*>(align64(reinterpret_cast<uint8_t*>(s.q + plan.direct_features)));
  return s;
}

// Spec 3.1 + 3.2 for token `m`: quantize its row kLanes features at a time, then compare kByteTokens
// features with their t-th thresholds at once and store the N shifted copies of the result.
template <int N>
void direct_encode_n(const BlockPlan& plan, const float* x, int64_t m, const DirectScratch& s) {
  const int d_in = plan.in_features;
  const int features = plan.direct_features;
  const float* row = x + m * static_cast<int64_t>(d_in);
  int i = 0;
  for (; i + kLanes <= d_in; i += kLanes)
    *reinterpret_cast<UnalignedShorts*>(s.q + i) =
        quantize(*reinterpret_cast<const UnalignedFloats*>(row + i),
                 *reinterpret_cast<const UnalignedFloats*>(plan.input_scale + i), Floats{} + plan.qmin,
                 Floats{} + plan.qmax);
  for (; i < d_in; ++i) s.q[i] = quantize(row[i], plan.input_scale[i], plan.qmin, plan.qmax);
  for (; i < features; ++i) s.q[i] = 0;
  const int64_t copy = plan.direct_copy_bytes[0];
  for (int t = 0; t < plan.thresholds_per_feature; ++t) {
    const int16_t* thresholds = plan.direct_thresholds + static_cast<int64_t>(t) * features;
    uint8_t* bits = s.copies[0] + static_cast<int64_t>(t) * features;
    for (int i0 = 0; i0 < features; i0 += kByteTokens) {
      const Bytes set = gt_bytes(s.q + i0, thresholds + i0);  // 0xFF or 0 (AVX2 has no byte shifts)
      for (int l = 0; l < N; ++l) *reinterpret_cast<Bytes*>(bits + l * copy + i0) = set & static_cast<uint8_t>(1 << l);
    }
  }
}

void direct_encode(const BlockPlan& plan, const float* x, int64_t m, int64_t count, void* scratch) {
  (void)count;  // always one token
  const DirectScratch s = direct_scratch(plan, scratch);
  switch (plan.lut_inputs) {
    case 1: return direct_encode_n<1>(plan, x, m, s);
    case 2: return direct_encode_n<2>(plan, x, m, s);
    case 3: return direct_encode_n<3>(plan, x, m, s);
    case 4: return direct_encode_n<4>(plan, x, m, s);
    case 5: return direct_encode_n<5>(plan, x, m, s);
    case 6: return direct_encode_n<6>(plan, x, m, s);
    case 7: return direct_encode_n<7>(plan, x, m, s);
    default: return direct_encode_n<8>(plan, x, m, s);
  }
}

// The row offsets as int32 or, when they fit, uint16 (block_layouts.h).
template <typename Index>
QUWEIT_INLINE const Index* direct_map(const BlockPlan& plan);
template <>
QUWEIT_INLINE const int32_t* direct_map<int32_t>(const BlockPlan& plan) { return plan.direct_mapping; }
template <>
QUWEIT_INLINE const uint16_t* direct_map<uint16_t>(const BlockPlan& plan) { return plan.direct_mapping16; }

// Offset l of a row: uint16 rows are read four offsets per 8-byte load (fewer loads per LUT; the array
// is padded so the last row's read stays inside it).
template <int N>
QUWEIT_INLINE void load_offsets(const uint16_t* map, uint32_t* offsets) {
  uint64_t words[(N + 3) / 4];
  __builtin_memcpy(words, map, sizeof(words));
  for (int l = 0; l < N; ++l) offsets[l] = static_cast<uint32_t>(words[l / 4] >> (16 * (l % 4))) & 0xFFFFu;
}

template <int N>
QUWEIT_INLINE void load_offsets(const int32_t* map, uint32_t* offsets) {
  for (int l = 0; l < N; ++l) offsets[l] = static_cast<uint32_t>(map[l]);
}

// Spec 3.3 for one LUT: address = OR of the slots' pre-shifted bytes, output = that bit of the table.
template <int N, typename Index>
QUWEIT_INLINE uint32_t direct_lut(const uint8_t* copies, const Index* map, const uint64_t* table) {
  uint32_t offsets[N];
  load_offsets<N>(map, offsets);
  uint32_t address = copies[offsets[0]];
  for (int l = 1; l < N; ++l) address |= copies[offsets[l]];
  if constexpr (N <= 6) {
    return static_cast<uint32_t>(table[0] >> address) & 1u;
  } else {
    return static_cast<uint32_t>(table[address >> 6] >> (address & 63)) & 1u;
  }
}

// LUTs [j_begin, j_end) of hidden layer k: output bytes into copy 0 of the next set, then the other
// copies by vector shifts. Ranges other than the layer's last start and end on multiples of 64.
template <int N, typename Index>
void direct_layer_n(const BlockPlan& plan, int k, const DirectScratch& s, int64_t j_begin, int64_t j_end) {
  constexpr int kWords = N <= 6 ? 1 : (1 << N) / 64;
  const uint8_t* in = s.copies[k % 2];
  uint8_t* out = s.copies[(k + 1) % 2];
  const int64_t first = plan.direct_row_offsets[k];
#pragma GCC unroll 8
  for (int64_t j = j_begin; j < j_end; ++j)
    out[j] = static_cast<uint8_t>(direct_lut<N>(in, direct_map<Index>(plan) + (first + j) * N, plan.direct_tables + (first + j) * kWords));
  const int64_t copy = plan.direct_copy_bytes[k + 1];
  for (int64_t j = j_begin; j < j_end; j += kByteTokens) {  // stays within the copy: it is padded to 64
    const Bytes set = -*reinterpret_cast<const Bytes*>(out + j);  // 0/1 -> 0/0xFF
    for (int l = 1; l < N; ++l) *reinterpret_cast<Bytes*>(out + l * copy + j) = set & static_cast<uint8_t>(1 << l);
  }
}

template <typename Index>
void direct_layer_index(const BlockPlan& plan, int k, const DirectScratch& s, int64_t j_begin, int64_t j_end) {
  switch (plan.lut_inputs) {
    case 1: return direct_layer_n<1, Index>(plan, k, s, j_begin, j_end);
    case 2: return direct_layer_n<2, Index>(plan, k, s, j_begin, j_end);
    case 3: return direct_layer_n<3, Index>(plan, k, s, j_begin, j_end);
    case 4: return direct_layer_n<4, Index>(plan, k, s, j_begin, j_end);
    case 5: return direct_layer_n<5, Index>(plan, k, s, j_begin, j_end);
    case 6: return direct_layer_n<6, Index>(plan, k, s, j_begin, j_end);
    case 7: return direct_layer_n<7, Index>(plan, k, s, j_begin, j_end);
    default: return direct_layer_n<8, Index>(plan, k, s, j_begin, j_end);
  }
}

void direct_layer(const BlockPlan& plan, int k, void* scratch, int64_t j_begin, int64_t j_end) {
  const DirectScratch s = direct_scratch(plan, scratch);
  if (plan.direct_mapping16 != nullptr) return direct_layer_index<uint16_t>(plan, k, s, j_begin, j_end);
  return direct_layer_index<int32_t>(plan, k, s, j_begin, j_end);
}

// Spec 3.3 (last layer) + 3.4 + 3.5 for outputs [o_begin, o_end) of token m, 16 at a time: the block's
// G * 16 LUT bytes, then acc = bias + sum over g of (-bit) & value, dequantized into Y's row.
template <int N, typename Index>
void direct_outputs_n(const BlockPlan& plan, const DirectScratch& s, float* y_row, int64_t o_begin, int64_t o_end) {
  constexpr int kWords = N <= 6 ? 1 : (1 << N) / 64;
  const int k = plan.num_layers - 1;
  const uint8_t* in = s.copies[k % 2];
  const int64_t g_size = plan.group_size;
  const int64_t block_rows = 16 * g_size;
  for (int64_t o0 = o_begin; o0 < o_end; o0 += 16) {
    const int64_t first = plan.direct_row_offsets[k] + o0 * g_size;
    const Index* map = direct_map<Index>(plan) + first * N;
    const uint64_t* table = plan.direct_tables + first * kWords;
    int32_t* bits = s.bits + o0 * g_size;
#pragma GCC unroll 8  // fewer loop instructions per LUT (about 21 -> 17)
    for (int64_t p = 0; p < block_rows; ++p) bits[p] = static_cast<int32_t>(direct_lut<N>(in, map + p * N, table + p * kWords));
    Ints16 acc = *reinterpret_cast<const Ints16*>(plan.direct_bias + o0);
    const int32_t* values = plan.direct_values + o0 * g_size;
    for (int64_t g = 0; g < g_size; ++g)
      acc += -*reinterpret_cast<const Ints16*>(bits + 16 * g) & *reinterpret_cast<const Ints16*>(values + 16 * g);
    const Floats16 out = __builtin_convertvector(acc, Floats16) * *reinterpret_cast<const Floats16*>(plan.direct_scale + o0);
    if (o_end - o0 >= 16) {
      *reinterpret_cast<Floats16*>(y_row + o0) = out;
    } else {
      for (int64_t o = o0; o < o_end; ++o) y_row[o] = out[o - o0];
    }
  }
}

template <typename Index>
void direct_outputs_index(const BlockPlan& plan, const DirectScratch& s, float* y_row, int64_t o_begin, int64_t o_end) {
  switch (plan.lut_inputs) {
    case 1: return direct_outputs_n<1, Index>(plan, s, y_row, o_begin, o_end);
    case 2: return direct_outputs_n<2, Index>(plan, s, y_row, o_begin, o_end);
    case 3: return direct_outputs_n<3, Index>(plan, s, y_row, o_begin, o_end);
    case 4: return direct_outputs_n<4, Index>(plan, s, y_row, o_begin, o_end);
    case 5: return direct_outputs_n<5, Index>(plan, s, y_row, o_begin, o_end);
    case 6: return direct_outputs_n<6, Index>(plan, s, y_row, o_begin, o_end);
    case 7: return direct_outputs_n<7, Index>(plan, s, y_row, o_begin, o_end);
    default: return direct_outputs_n<8, Index>(plan, s, y_row, o_begin, o_end);
  }
}

void direct_outputs(const BlockPlan& plan, float* y, int64_t m, int64_t count, int64_t o_begin, int64_t o_end,
                    const void* shared, void* own) {
  (void)count;  // always one token
  (void)own;    // no staging: each task writes its outputs' part of the row
  const DirectScratch s = direct_scratch(plan, const_cast<void*>(shared));
  float* y_row = y + m * static_cast<int64_t>(plan.out_features);
  if (plan.direct_mapping16 != nullptr) return direct_outputs_index<uint16_t>(plan, s, y_row, o_begin, o_end);
  return direct_outputs_index<int32_t>(plan, s, y_row, o_begin, o_end);
}

// Tokens [begin, begin + count) one after the other on one thread.
void direct_tokens(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count, void* scratch) {
  for (int64_t m = begin; m < begin + count; ++m) {
    direct_encode(plan, x, m, 1, scratch);
    for (int k = 0; k + 1 < plan.num_layers; ++k) direct_layer(plan, k, scratch, 0, plan.layer_sizes[k]);
    direct_outputs(plan, y, m, 1, 0, plan.out_features, scratch, scratch);
  }
}

const PathKernels kDirectKernels = {1, &direct_scratch_bytes, &direct_tokens, &direct_encode, &direct_layer, &direct_outputs};

}  // namespace QUWEIT_ISA
}  // namespace quweit
