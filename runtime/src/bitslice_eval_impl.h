// Bit-sliced evaluation of one tile of tokens; included once per instruction set by tile_eval_<isa>.cc,
// which compiles it with that ISA's flags and provides `gt_mask64` and the namespace QUWEIT_ISA.
//
// Layout (why it is fast): a tile holds 64*K tokens; every thermometer bit and every LUT output bit is a
// "bit plane" of K uint64 words whose bit m belongs to token m. One LUT is then evaluated for all tokens
// of the tile at once with bitwise operations on its n input planes (a mux tree over its INIT word),
// independent of the token count; conditional sums add encoded values under per-token bit masks into
// int32 accumulators. No standard-library templates here: this code is compiled once per ISA.
#ifndef QUWEIT_ISA
#error "define QUWEIT_ISA and include simd_common.h before including bitslice_eval_impl.h"
#endif

#include "block_plan.h"

namespace quweit {
namespace QUWEIT_ISA {

template <int K>
struct Plane {
  typedef uint64_t type __attribute__((vector_size(8 * K), may_alias));
};
template <>
struct Plane<1> {
  typedef uint64_t __attribute__((may_alias)) type;
};

// Spec 3.1 + 3.2: quantize the tile's tokens kLanes features at a time (transposed, token-minor) and
// write one bit plane per (feature, threshold): bit m = q[m] > threshold.
template <int K>
QUWEIT_INLINE void encode_thermometer(const BlockPlan& plan, const float* x, int64_t begin, int64_t count,
                                      uint64_t* planes, int16_t* qt) {
  constexpr int kTokens = 64 * K;
  const int d_in = plan.in_features;
  const int t_per = plan.thresholds_per_feature;
  const int64_t slots = (count + 63) / 64 * 64;  // whole words; later words are never stored
  for (int i0 = 0; i0 < d_in; i0 += kLanes) {
    const int nb = d_in - i0 < kLanes ? d_in - i0 : kLanes;
    quantize_transposed(plan, x, begin, count, i0, nb, qt, kTokens, slots);
    for (int ii = 0; ii < nb; ++ii) {
      const int i = i0 + ii;
      const int16_t* q = qt + ii * kTokens;
      for (int t = 0; t < t_per; ++t) {
        const int16_t threshold = plan.thresholds[i * t_per + t];
        uint64_t* plane = planes + static_cast<int64_t>(i * t_per + t) * K;
        for (int w = 0; w < K; ++w) plane[w] = w * 64 < slots ? gt_mask64(q + 64 * w, threshold) : 0;
      }
    }
  }
}

// One LUT of N inputs over bit planes (spec 3.3): address bit l = plane of mapping slot l.
// The two lowest address bits select among the 16 functions of (a0, a1), built once per LUT; each INIT
// nibble then picks its function, and the higher address bits reduce the leaves four (or two) at a time.
template <int K, int N>
QUWEIT_INLINE typename Plane<K>::type eval_lut(const uint64_t* in, const int32_t* map, const uint64_t* table) {
  typedef typename Plane<K>::type V;
  V a[N];
  for (int l = 0; l < N; ++l) a[l] = *reinterpret_cast<const V*>(in + static_cast<int64_t>(map[l]) * K);
  const V zero = a[0] ^ a[0];
  if constexpr (N == 1) {
    const V lo = (table[0] & 1) ? ~zero : zero;
    const V hi = (table[0] & 2) ? ~zero : zero;
    return (lo & ~a[0]) | (hi & a[0]);
  }
  else {
  const V na0 = ~a[0], na1 = ~a[1];
  V f[16];
  f[0] = zero;
  f[1] = na1 & na0;
  f[2] = na1 & a[0];
  f[4] = a[1] & na0;
  f[8] = a[1] & a[0];
  f[3] = f[1] | f[2];
  f[5] = f[1] | f[4];
  f[6] = f[2] | f[4];
  f[7] = f[3] | f[4];
  f[9] = f[1] | f[8];
  f[10] = f[2] | f[8];
  f[11] = f[3] | f[8];
  f[12] = f[4] | f[8];
  f[13] = f[5] | f[8];
  f[14] = f[6] | f[8];
  f[15] = ~zero;
  constexpr int kLeaves = 1 << (N - 2);
  V leaf[kLeaves];
  for (int j = 0; j < kLeaves; ++j) leaf[j] = f[(table[j >> 4] >> ((j & 15) * 4)) & 15];
  int count = kLeaves;
  int level = 2;
  for (; N - level >= 2; level += 2) {
    const V s0 = a[level], s1 = a[level + 1], n0 = ~s0, n1 = ~s1;
    const V m0 = n1 & n0, m1 = n1 & s0, m2 = s1 & n0, m3 = s1 & s0;
    for (int j = 0; j < count / 4; ++j)
      leaf[j] = (leaf[4 * j] & m0) | (leaf[4 * j + 1] & m1) | (leaf[4 * j + 2] & m2) | (leaf[4 * j + 3] & m3);
    count /= 4;
  }
  if (N - level == 1) leaf[0] = (leaf[0] & ~a[level]) | (leaf[1] & a[level]);
  return leaf[0];
  }
}

template <int K, int N>
QUWEIT_INLINE void eval_layer_n(const BlockPlan& plan, int k, const uint64_t* in, uint64_t* out) {
  typedef typename Plane<K>::type V;
  const int64_t first = plan.layer_offsets[k];
  const int size = plan.layer_sizes[k];
  const int words = plan.words_per_table;
  for (int j = 0; j < size; ++j) {
    const int64_t r = first + j;
    *reinterpret_cast<V*>(out + static_cast<int64_t>(j) * K) =
        eval_lut<K, N>(in, plan.mapping + r * N, plan.tables + r * words);
  }
}

template <int K>
QUWEIT_INLINE void eval_layer(const BlockPlan& plan, int k, const uint64_t* in, uint64_t* out) {
  switch (plan.lut_inputs) {
    case 1: return eval_layer_n<K, 1>(plan, k, in, out);
    case 2: return eval_layer_n<K, 2>(plan, k, in, out);
    case 3: return eval_layer_n<K, 3>(plan, k, in, out);
    case 4: return eval_layer_n<K, 4>(plan, k, in, out);
    case 5: return eval_layer_n<K, 5>(plan, k, in, out);
    case 6: return eval_layer_n<K, 6>(plan, k, in, out);
    case 7: return eval_layer_n<K, 7>(plan, k, in, out);
    default: return eval_layer_n<K, 8>(plan, k, in, out);
  }
}

// Spec 3.4 for output o and tokens [32 h, 32 h + 32) of the tile: acc[c] lane j (token 32 h + kLanes c
// + j) = bias + the encoded values of o's LUTs whose bit is set. With byte shuffles (AVX2): four LUTs'
// bits become a 4-bit pattern per token that indexes their precomputed partial sums (byteslice path's
// add_pattern_sums); otherwise each LUT adds its value under a lane mask.
template <int K>
QUWEIT_INLINE void sum_half(const BlockPlan& plan, const uint64_t* bits, int64_t o, int h, Lanes* acc) {
  const int g_size = plan.group_size;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(bits + o * g_size * K) + h;  // little-endian halves
#ifdef QUWEIT_PATTERN_SUMS
  static_assert(kByteTokens == 32, "pattern sums take 32 tokens per vector");
  for (int c = 0; c < 32 / kLanes; ++c) acc[c] = Lanes{};
  for (int j = 0; j < plan.sum_groups; ++j) {
    const int width = g_size - 4 * j < 4 ? g_size - 4 * j : 4;
    Bytes pattern = expand_bits(words[2 * K * (4 * j)]) & 1;
    for (int b = 1; b < width; ++b) pattern |= expand_bits(words[2 * K * (4 * j + b)]) & bit_mask(b);
    add_pattern_sums(pattern, plan.sum_planes + (o * plan.sum_groups + j) * 64, acc);
  }
#else
  Lanes select[32 / kLanes];
  for (int c = 0; c < 32 / kLanes; ++c) {
    for (int i = 0; i < kLanes; ++i) select[c][i] = static_cast<int32_t>(uint32_t{1} << (c * kLanes + i));
    acc[c] = Lanes{} + plan.bias[o];
  }
  const int32_t* values = plan.encoded_values + o * g_size;
  for (int g = 0; g < g_size; ++g) {
    const Lanes word = Lanes{} + static_cast<int32_t>(words[2 * K * g]);
    const Lanes value = Lanes{} + values[g];
    for (int c = 0; c < 32 / kLanes; ++c) acc[c] += ((word & select[c]) == select[c]) & value;
  }
#endif
}

// Spec 3.4 + 3.5 for the tile: kLanes outputs at a time, 32 tokens at a time, fl32(acc) * output_scale
// into the staging rows yt[output][token], then rows of Y through transposes.
template <int K>
QUWEIT_INLINE void sum_and_store(const BlockPlan& plan, const uint64_t* bits, float* y, int64_t begin,
                                 int64_t count, float* yt) {
  constexpr int kTokens = 64 * K;
  const int d_out = plan.out_features;
  const int halves = static_cast<int>((count + 31) / 32);
  for (int o0 = 0; o0 < d_out; o0 += kLanes) {
    const int ob = d_out - o0 < kLanes ? d_out - o0 : kLanes;
    for (int oo = 0; oo < ob; ++oo) {
      const float scale = plan.output_scale[o0 + oo];
      for (int h = 0; h < halves; ++h) {
        Lanes acc[32 / kLanes];
        sum_half<K>(plan, bits, o0 + oo, h, acc);
        for (int c = 0; c < 32 / kLanes; ++c)
          *reinterpret_cast<Floats*>(yt + oo * kTokens + 32 * h + c * kLanes) = __builtin_convertvector(acc[c], Floats) * scale;
      }
    }
    store_transposed(yt, kTokens, y, d_out, o0, ob, begin, count);
  }
}

template <int K>
void evaluate_tile(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count, void* scratch) {
  constexpr int kTokens = 64 * K;
  const int64_t plane_words = static_cast<int64_t>(plan.max_layer_bits) * K;
  uint64_t* buffer_a = align64(static_cast<uint64_t*>(scratch));
  uint64_t* buffer_b = align64(buffer_a + plane_words);
  int16_t* qt = align64(reinterpret_cast<int16_t*>(buffer_b + plane_words));
  float* yt = align64(reinterpret_cast<float*>(qt + kLanes * kTokens));
  encode_thermometer<K>(plan, x, begin, count, buffer_a, qt);
  uint64_t* in = buffer_a;
  uint64_t* out = buffer_b;
  for (int k = 0; k < plan.num_layers; ++k) {
    eval_layer<K>(plan, k, in, out);
    uint64_t* swap = in;
    in = out;
    out = swap;
  }
  sum_and_store<K>(plan, in, y, begin, count, yt);
}

}  // namespace QUWEIT_ISA
}  // namespace quweit
