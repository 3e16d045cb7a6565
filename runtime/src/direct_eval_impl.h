// Direct evaluation of tiles of 1 to kDirectTokens tokens (one token, or a few packed together; see
// kDirectTokens); included once per instruction set by tile_eval_<isa>.cc after simd_common.h and the
// ISA's gt_bytes (it compares kByteTokens features per vector).
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

// Tokens of a tile: one token runs on the pre-shifted copies below; 2 to kDirectTokens tokens are
// evaluated together ("packed"): their bits are interleaved, byte (position * 4 + m) = bit of token m
// (0/1), so one 4-byte load per LUT input fetches the bit of every token, the n loads are summed as
// b0 + 2 b1 + 4 b2 + ... (no carries between bytes: each byte stays below 2^n <= 256), and byte m of the
// sum is token m's address. Offsets and table are then loaded once for all tokens: about 2.4x fewer
// instructions per LUT and token than one token at a time at 4 tokens (a standalone measurement),
// with one interleaved copy instead of n pre-shifted ones per token (which would not fit in L1).
constexpr int kDirectTokens = 4;

// Scratch: two sets of n copies (a layer's input and output bits, one token), two interleaved bit
// buffers (packed tokens), the tokens' quantized inputs, and per token the last layer's output bits
// (int32 0/1, ready for vector sums), each 64-byte aligned.
struct DirectScratch {
  uint8_t* copies[2];
  uint8_t* packed[2];
  int16_t* q;
  int32_t* bits[kDirectTokens];
};

// Bytes of the widest layer input (one copy: positions padded to 64).
QUWEIT_INLINE size_t direct_widest_copy(const BlockPlan& plan) {
  if (plan.direct_rows == 0) return 0;  // path not offered for this block
  int64_t widest = 0;
  for (int k = 0; k < plan.num_layers; ++k) widest = plan.direct_copy_bytes[k] > widest ? plan.direct_copy_bytes[k] : widest;
  return static_cast<size_t>(widest);
}

QUWEIT_INLINE size_t direct_bits_bytes(const BlockPlan& plan) {
  return (static_cast<size_t>(plan.direct_outputs) * plan.group_size * sizeof(int32_t) + 63) / 64 * 64;
}

size_t direct_scratch_bytes(const BlockPlan& plan) {
  const size_t copy = direct_widest_copy(plan);
  return 2 * plan.lut_inputs * copy + 2 * kDirectTokens * copy + kDirectTokens * direct_bits_bytes(plan) +
         (kDirectTokens * plan.direct_features * sizeof(int16_t) + 63) / 64 * 64 + 64;
}

QUWEIT_INLINE DirectScratch direct_scratch(const BlockPlan& plan, void* scratch) {
  const size_t copy = direct_widest_copy(plan);  // a multiple of 64
  DirectScratch s;
  uint8_t* next = align64(static_cast<uint8_t*>(scratch));
  for (int b = 0; b < 2; ++b, next += plan.lut_inputs * copy) s.copies[b] = next;
  for (int b = 0; b < 2; ++b, next += kDirectTokens * copy) s.packed[b] = next;
  for (int m = 0; m < kDirectTokens; ++m, next += direct_bits_bytes(plan)) s.bits[m] = reinterpret_cast<int32_t*>(next);
  s.q = reinterpret_cast<int16_t*>(next);
  return s;
}

// Spec 3.1 for token m's row into q[0, direct_features) (kLanes features at a time; padding zeros).
QUWEIT_INLINE void direct_quantize(const BlockPlan& plan, const float* x, int64_t m, int16_t* q) {
  const int d_in = plan.in_features;
  const float* row = x + m * static_cast<int64_t>(d_in);
  int i = 0;
  for (; i + kLanes <= d_in; i += kLanes)
    *reinterpret_cast<UnalignedShorts*>(q + i) =
        quantize(*reinterpret_cast<const UnalignedFloats*>(row + i),
                 *reinterpret_cast<const UnalignedFloats*>(plan.input_scale + i), Floats{} + plan.qmin,
                 Floats{} + plan.qmax);
  for (; i < d_in; ++i) q[i] = quantize(row[i], plan.input_scale[i], plan.qmin, plan.qmax);
  for (; i < plan.direct_features; ++i) q[i] = 0;
}

// Spec 3.1 + 3.2 for token `m`: quantize its row kLanes features at a time, then compare kByteTokens
// features with their t-th thresholds at once and store the N shifted copies of the result.
template <int N>
void direct_encode_one(const BlockPlan& plan, const float* x, int64_t m, const DirectScratch& s) {
  const int features = plan.direct_features;
  direct_quantize(plan, x, m, s.q);
  const int64_t copy = plan.direct_copy_bytes[0];
  for (int t = 0; t < plan.thresholds_per_feature; ++t) {
    const int16_t* thresholds = plan.direct_thresholds + static_cast<int64_t>(t) * features;
    uint8_t* bits = s.copies[0] + static_cast<int64_t>(t) * features;
    for (int i0 = 0; i0 < features; i0 += kByteTokens) {
      const Bytes set = gt_bytes(s.q + i0, thresholds + i0);  // 0xFF or 0 (AVX2 has no byte shifts)
      for (int l = 0; l < N; ++l) *reinterpret_cast<Bytes*>(bits + l * copy + i0) = (set & bit_mask(l));
    }
  }
}

// Spec 3.1 + 3.2 for K packed tokens: each token's thermometer bytes (0xFF/0, kByteTokens features
// per compare) are interleaved four tokens per feature by byte, then 16-bit shuffles, and stored as
// 0/1 at byte (position * 4 + m); absent token slots (m >= count) read zeros.
template <int K>
void direct_encode_packed(const BlockPlan& plan, const float* x, int64_t begin, const DirectScratch& s) {
  const int features = plan.direct_features;
  for (int m = 0; m < kDirectTokens; ++m) {
    int16_t* q = s.q + m * features;
    if (m < K) {
      direct_quantize(plan, x, begin + m, q);
    } else {
      for (int i = 0; i < features; ++i) q[i] = 0;
    }
  }
  typedef uint16_t Pairs __attribute__((vector_size(kByteTokens), may_alias));
  constexpr int kHalf = kByteTokens / 2;
  for (int t = 0; t < plan.thresholds_per_feature; ++t) {
    const int16_t* thresholds = plan.direct_thresholds + static_cast<int64_t>(t) * features;
    uint8_t* out = s.packed[0] + static_cast<int64_t>(t) * features * kDirectTokens;
    for (int i0 = 0; i0 < features; i0 += kByteTokens) {
      Bytes set[kDirectTokens];
      for (int m = 0; m < kDirectTokens; ++m) set[m] = gt_bytes(s.q + m * features + i0, thresholds + i0) & 1;
      // (feature i, token pair) as 16-bit units, then (feature i, 4 tokens) as 32-bit units.
      Bytes low01, high01, low23, high23;
      {
        Bytes lo_idx, hi_idx;
        for (int e = 0; e < kByteTokens; ++e) {
          lo_idx[e] = static_cast<uint8_t>((e / 2) + (e % 2) * kByteTokens);
          hi_idx[e] = static_cast<uint8_t>(kHalf + (e / 2) + (e % 2) * kByteTokens);
        }
        low01 = __builtin_shuffle(set[0], set[1], lo_idx);
        high01 = __builtin_shuffle(set[0], set[1], hi_idx);
        low23 = __builtin_shuffle(set[2], set[3], lo_idx);
        high23 = __builtin_shuffle(set[2], set[3], hi_idx);
      }
      Pairs lo_idx, hi_idx;
      for (int e = 0; e < kHalf; ++e) {
        lo_idx[e] = static_cast<uint16_t>((e / 2) + (e % 2) * kHalf);
        hi_idx[e] = static_cast<uint16_t>(kHalf / 2 + (e / 2) + (e % 2) * kHalf);
      }
      Bytes* dst = reinterpret_cast<Bytes*>(out + static_cast<int64_t>(i0) * kDirectTokens);
      dst[0] = (Bytes)__builtin_shuffle((Pairs)low01, (Pairs)low23, lo_idx);
      dst[1] = (Bytes)__builtin_shuffle((Pairs)low01, (Pairs)low23, hi_idx);
      dst[2] = (Bytes)__builtin_shuffle((Pairs)high01, (Pairs)high23, lo_idx);
      dst[3] = (Bytes)__builtin_shuffle((Pairs)high01, (Pairs)high23, hi_idx);
    }
  }
}
static_assert(kDirectTokens == 4, "direct_encode_packed interleaves four token slots");

template <int N, int K>
struct DirectEncodeStep {
  static void run(const BlockPlan& plan, const float* x, int64_t begin, const DirectScratch& s) {
    if constexpr (K == 1) {
      direct_encode_one<N>(plan, x, begin, s);
    } else {
      direct_encode_packed<K>(plan, x, begin, s);
    }
  }
};

// Calls Step<N, K>::run(plan, args...) for the block's LUT width n and the tile's token count K.
template <template <int, int> class Step, typename... Args>
QUWEIT_INLINE void direct_dispatch(const BlockPlan& plan, int64_t count, Args... args) {
#define QUWEIT_DIRECT_TOKENS(N)                         \
  switch (count) {                                      \
    case 1: return Step<N, 1>::run(plan, args...);      \
    case 2: return Step<N, 2>::run(plan, args...);      \
    case 3: return Step<N, 3>::run(plan, args...);      \
    default: return Step<N, 4>::run(plan, args...);     \
  }
  switch (plan.lut_inputs) {
    case 1: QUWEIT_DIRECT_TOKENS(1)
    case 2: QUWEIT_DIRECT_TOKENS(2)
    case 3: QUWEIT_DIRECT_TOKENS(3)
    case 4: QUWEIT_DIRECT_TOKENS(4)
    case 5: QUWEIT_DIRECT_TOKENS(5)
    case 6: QUWEIT_DIRECT_TOKENS(6)
    case 7: QUWEIT_DIRECT_TOKENS(7)
    default: QUWEIT_DIRECT_TOKENS(8)
  }
#undef QUWEIT_DIRECT_TOKENS
}

// Tokens [begin, begin + count), 1 <= count <= kDirectTokens.
void direct_encode(const BlockPlan& plan, const float* x, int64_t begin, int64_t count, void* scratch) {
  direct_dispatch<DirectEncodeStep>(plan, count, x, begin, direct_scratch(plan, scratch));
}

// The row offsets as int32 or, when they fit, uint16 (block_layouts.h).
template <typename Index>
QUWEIT_INLINE const Index* direct_map(const BlockPlan& plan);
template <>
QUWEIT_INLINE const int32_t* direct_map<int32_t>(const BlockPlan& plan) { return plan.direct_mapping; }
template <>
QUWEIT_INLINE const uint16_t* direct_map<uint16_t>(const BlockPlan& plan) { return plan.direct_mapping16; }

// Offset l of a row: uint16 rows give their first four offsets from one 8-byte load and the rest from
// their own loads. A LUT is bound by loads and by the shifts that unpack offsets about equally, and
// this split was about 3% faster than either all loads or all unpacking (the array is padded so the
// 8-byte read stays inside it).
template <int N>
QUWEIT_INLINE void load_offsets(const uint16_t* map, uint32_t* offsets) {
  uint64_t word;
  __builtin_memcpy(&word, map, sizeof(word));
  for (int l = 0; l < N && l < 4; ++l) offsets[l] = static_cast<uint32_t>(word >> (16 * l)) & 0xFFFFu;
  for (int l = 4; l < N; ++l) offsets[l] = map[l];
}

template <int N>
QUWEIT_INLINE void load_offsets(const int32_t* map, uint32_t* offsets) {
  for (int l = 0; l < N; ++l) offsets[l] = static_cast<uint32_t>(map[l]);
}

// Spec 3.3 for one LUT and K tokens into bits[0, K). One token: address = OR of the slots'
// pre-shifted bytes. Packed tokens: the slots' 4-byte groups summed with weights 2^l (`base[l]` is the
// interleaved buffer minus l copies' worth of positions, since offsets include l * copy bytes).
template <int N, int K, typename Index>
QUWEIT_INLINE void direct_lut(const uint8_t* copies, const uintptr_t* base, const Index* map, const uint64_t* table,
                              uint32_t* bits) {
  uint32_t offsets[N];
  load_offsets<N>(map, offsets);
  if constexpr (K == 1) {
    (void)base;
    uint32_t address = copies[offsets[0]];
    for (int l = 1; l < N; ++l) address |= copies[offsets[l]];
    if constexpr (N <= 6) {
      bits[0] = static_cast<uint32_t>(table[0] >> address) & 1u;
    } else {
      bits[0] = static_cast<uint32_t>(table[address >> 6] >> (address & 63)) & 1u;
    }
  } else {
    (void)copies;
    uint32_t packed = 0;
    for (int l = 0; l < N; ++l) {
      uint32_t group;
      __builtin_memcpy(&group, reinterpret_cast<const void*>(base[l] + 4 * uintptr_t{offsets[l]}), sizeof(group));
      packed += group << l;
    }
    for (int m = 0; m < K; ++m) {
      const uint32_t address = (packed >> (8 * m)) & 0xFFu;
      if constexpr (N <= 6) {
        bits[m] = static_cast<uint32_t>(table[0] >> address) & 1u;
      } else {
        bits[m] = static_cast<uint32_t>(table[address >> 6] >> (address & 63)) & 1u;
      }
    }
  }
}

// Layer k's inputs for direct_lut: the copies (one token) or the interleaved buffer's slot bases.
template <int N>
QUWEIT_INLINE void direct_bases(const BlockPlan& plan, int k, const DirectScratch& s, uintptr_t* base) {
  const uintptr_t packed = reinterpret_cast<uintptr_t>(s.packed[k % 2]);
  for (int l = 0; l < N; ++l) base[l] = packed - 4 * static_cast<uintptr_t>(l) * plan.direct_copy_bytes[k];
}

// LUTs [j_begin, j_end) of hidden layer k. One token: output bytes into copy 0 of the next set, then
// the other copies by vector shifts. Packed: bytes (j * 4 + m) of the next interleaved buffer. Ranges
// other than the layer's last start and end on multiples of 64.
template <int N, int K, typename Index>
void direct_layer_n(const BlockPlan& plan, int k, const DirectScratch& s, int64_t j_begin, int64_t j_end) {
  constexpr int kWords = N <= 6 ? 1 : (1 << N) / 64;
  const uint8_t* in = s.copies[k % 2];
  uint8_t* out = K == 1 ? s.copies[(k + 1) % 2] : s.packed[(k + 1) % 2];
  uintptr_t base[N];
  direct_bases<N>(plan, k, s, base);
  const int64_t first = plan.direct_row_offsets[k];
#pragma GCC unroll 8
  for (int64_t j = j_begin; j < j_end; ++j) {
    uint32_t bits[K];
    direct_lut<N, K>(in, base, direct_map<Index>(plan) + (first + j) * N, plan.direct_tables + (first + j) * kWords, bits);
    if constexpr (K == 1) {
      out[j] = static_cast<uint8_t>(bits[0]);
    } else {
      uint32_t group = 0;  // absent token slots get 0
      for (int m = 0; m < K; ++m) group |= bits[m] << (8 * m);
      __builtin_memcpy(out + 4 * j, &group, sizeof(group));
    }
  }
  if constexpr (K == 1) {
    const int64_t copy = plan.direct_copy_bytes[k + 1];
    for (int64_t j = j_begin; j < j_end; j += kByteTokens) {  // stays within the copy: it is padded to 64
      const Bytes set = -*reinterpret_cast<const Bytes*>(out + j);  // 0/1 -> 0/0xFF
      for (int l = 1; l < N; ++l) *reinterpret_cast<Bytes*>(out + l * copy + j) = (set & bit_mask(l));
    }
  }
}

template <int N, int K>
struct DirectLayerStep {
  template <typename Index>
  static void with(const BlockPlan& plan, int k, const DirectScratch& s, int64_t j_begin, int64_t j_end) {
    direct_layer_n<N, K, Index>(plan, k, s, j_begin, j_end);
  }
  static void run(const BlockPlan& plan, int k, const DirectScratch& s, int64_t j_begin, int64_t j_end) {
    if (plan.direct_mapping16 != nullptr) return with<uint16_t>(plan, k, s, j_begin, j_end);
    return with<int32_t>(plan, k, s, j_begin, j_end);
  }
};

void direct_layer(const BlockPlan& plan, int k, void* scratch, int64_t count, int64_t j_begin, int64_t j_end) {
  direct_dispatch<DirectLayerStep>(plan, count, k, direct_scratch(plan, scratch), j_begin, j_end);
}

// Spec 3.3 (last layer) + 3.4 + 3.5 for outputs [o_begin, o_end) of the tile's K tokens (rows y_rows[m]),
// 16 at a time: the block's G * 16 LUT bits, then acc = bias + sum over g of (-bit) & value,
// dequantized into Y's rows.
template <int N, int K, typename Index>
void direct_outputs_n(const BlockPlan& plan, const DirectScratch& s, float* const* y_rows, int64_t o_begin,
                      int64_t o_end) {
  constexpr int kWords = N <= 6 ? 1 : (1 << N) / 64;
  const int k = plan.num_layers - 1;
  const uint8_t* in = s.copies[k % 2];
  uintptr_t base[N];
  direct_bases<N>(plan, k, s, base);
  const int64_t g_size = plan.group_size;
  const int64_t block_rows = 16 * g_size;
  // All of the range's LUT bits first, then the sums (about 3% faster: a vector load of bits that
  // scalar stores wrote a moment before waits for them to leave the store buffer).
  for (int64_t o0 = o_begin; o0 < o_end; o0 += 16) {
    const int64_t first = plan.direct_row_offsets[k] + o0 * g_size;
    const Index* map = direct_map<Index>(plan) + first * N;
    const uint64_t* table = plan.direct_tables + first * kWords;
    const int64_t row = o0 * g_size;
#pragma GCC unroll 8  // fewer loop instructions per LUT (about 21 -> 17)
    for (int64_t p = 0; p < block_rows; ++p) {
      uint32_t bits[K];
      direct_lut<N, K>(in, base, map + p * N, table + p * kWords, bits);
      for (int m = 0; m < K; ++m) s.bits[m][row + p] = static_cast<int32_t>(bits[m]);
    }
  }
  // The sums in native vectors (kParts of kLanes outputs): GCC spills 64-byte generic vectors to the
  // stack on narrower ISAs, which cost more than all the LUTs' loads.
  constexpr int kParts = 16 / kLanes;
  for (int m = 0; m < K; ++m) {
    for (int64_t o0 = o_begin; o0 < o_end; o0 += 16) {
      const int32_t* bits = s.bits[m] + o0 * g_size;
      const int32_t* values = plan.direct_values + o0 * g_size;
      Lanes acc[kParts];
      for (int c = 0; c < kParts; ++c) acc[c] = *reinterpret_cast<const UnalignedLanes*>(plan.direct_bias + o0 + c * kLanes);
      for (int64_t g = 0; g < g_size; ++g)
        for (int c = 0; c < kParts; ++c)
          acc[c] += -*reinterpret_cast<const Lanes*>(bits + 16 * g + c * kLanes) &
                    *reinterpret_cast<const UnalignedLanes*>(values + 16 * g + c * kLanes);
      for (int c = 0; c < kParts; ++c) {
        const int64_t o = o0 + c * kLanes;
        const Floats out = __builtin_convertvector(acc[c], Floats) * *reinterpret_cast<const UnalignedFloats*>(plan.direct_scale + o);
        if (o_end - o >= kLanes) {
          *reinterpret_cast<UnalignedFloats*>(y_rows[m] + o) = out;
        } else {
          for (int64_t j = o; j < o_end; ++j) y_rows[m][j] = out[j - o];
        }
      }
    }
  }
}

template <int N, int K>
struct DirectOutputsStep {
  template <typename Index>
  static void with(const BlockPlan& plan, const DirectScratch& s, float* const* y_rows, int64_t o_begin, int64_t o_end) {
    direct_outputs_n<N, K, Index>(plan, s, y_rows, o_begin, o_end);
  }
  static void run(const BlockPlan& plan, const DirectScratch& s, float* const* y_rows, int64_t o_begin, int64_t o_end) {
    if (plan.direct_mapping16 != nullptr) return with<uint16_t>(plan, s, y_rows, o_begin, o_end);
    return with<int32_t>(plan, s, y_rows, o_begin, o_end);
  }
};

void direct_outputs(const BlockPlan& plan, float* y, int64_t begin, int64_t count, int64_t o_begin, int64_t o_end,
                    const void* shared, void* own) {
  (void)own;  // no staging: each task writes its outputs' part of the rows
  float* y_rows[kDirectTokens] = {};
  for (int64_t m = 0; m < count; ++m) y_rows[m] = y + (begin + m) * static_cast<int64_t>(plan.out_features);
  direct_dispatch<DirectOutputsStep>(plan, count, direct_scratch(plan, const_cast<void*>(shared)),
                                     static_cast<float* const*>(y_rows), o_begin, o_end);
}

// Tokens [begin, begin + count), 1 <= count <= kDirectTokens, on one thread.
void direct_tile(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count, void* scratch) {
  direct_encode(plan, x, begin, count, scratch);
  for (int k = 0; k + 1 < plan.num_layers; ++k) direct_layer(plan, k, scratch, count, 0, plan.layer_sizes[k]);
  direct_outputs(plan, y, begin, count, 0, plan.out_features, scratch, scratch);
}

const PathKernels kDirectKernels = {kDirectTokens, &direct_scratch_bytes, &direct_tile, &direct_encode, &direct_layer, &direct_outputs};

}  // namespace QUWEIT_ISA
}  // namespace quweit
