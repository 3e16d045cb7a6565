// Fused training ops of WeightlessBlock (forward with saved LUT addresses; EFD backward; learnable mapping), the
// native path of the torch shim (custom_ops/fused_training.py). The per-stage torch path materialises every
// slot bit as a float ([B, L * n], or [B, L * n * C] for the mapping weights) and gathers/scatters it several
// times; here each token's bits stay in a small buffer and the backward reads one byte per (token, LUT).
//
// Work is split into tasks whose outputs are disjoint, each computed in a fixed order by one thread:
// token chunks (forward, input gradients) and LUT blocks (table, value, mapping-weight and bias gradients,
// each summed over the tokens in token order). Results are therefore the same for any thread count.
#include "train_block.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace {

// Tokens per task of the token-parallel passes: 64, so each task owns whole words of the token-major bit rows.
constexpr int64_t kTokenChunk = 64;
constexpr int kLutBlock = 64;        // LUTs per task of the table-gradient pass (their rows stay in L1/L2)
// With mapping-weight gradients, a task takes fewer LUTs and the tokens in chunks, so its slot gradients
// ([LUTs * n, chunk] floats) stay in L2.
constexpr int kWeightLutBlock = 16;
constexpr int64_t kWeightTokens = 512;
constexpr int kOutputBlock = 64;     // outputs per task of the bias-gradient pass

struct Failure {
  std::string message;
};

// Derived sizes of a validated block.
struct Shape {
  int64_t tokens = 0;
  int in_features = 0, thresholds = 0, n = 0, layers = 0, out_features = 0, group = 0, candidates = 1;
  int entries = 0;  // 2^n
  int words = 0;    // 64-bit words per packed sign table
  std::vector<int> width;  // width[0] = N_0 = D_in * T, width[k + 1] = L_k
  int max_width = 0;
  int lut_count(int k) const { return width[k + 1]; }
  int64_t token_words() const { return (tokens + 63) / 64; }  // per input bit, its tokens' bits packed
};

Shape validate(const QuweitTrainBlock* b) {
  if (!b) throw Failure{"block is null"};
  Shape s;
  s.tokens = b->tokens;
  s.in_features = b->in_features;
  s.thresholds = b->thresholds_per_feature;
  s.n = b->lut_inputs;
  s.layers = b->num_layers;
  s.out_features = b->out_features;
  s.group = b->group_size;
  s.candidates = b->candidates;
  if (s.tokens < 0) throw Failure{"tokens must be >= 0, got " + std::to_string(s.tokens)};
  if (s.n < 1 || s.n > 8) throw Failure{"lut_inputs must be in 1..8, got " + std::to_string(s.n)};
  if (s.in_features < 1 || s.thresholds < 1 || s.layers < 1 || s.out_features < 1 || s.group < 1 || s.candidates < 1)
    throw Failure{"in_features, thresholds_per_feature, num_layers, out_features, group_size, candidates must be >= 1"};
  if (!b->layer_sizes || !b->input_scale || !b->thresholds || !b->surrogate_width || !b->mapping || !b->tables ||
      !b->values || !b->bias)
    throw Failure{"a parameter pointer is null"};
  if (s.candidates > 1 && (!b->candidate_bits || !b->candidate_spread))
    throw Failure{"candidates > 1 needs candidate_bits and candidate_spread"};
  s.entries = 1 << s.n;
  s.words = std::max(1, s.entries / 64);
  s.width.push_back(s.in_features * s.thresholds);
  for (int k = 0; k < s.layers; ++k) {
    if (b->layer_sizes[k] < 1) throw Failure{"layer " + std::to_string(k) + " has no LUTs"};
    if (!b->mapping[k] || !b->tables[k]) throw Failure{"layer " + std::to_string(k) + ": null mapping or tables"};
    if (s.candidates > 1 && (!b->candidate_bits[k] || !b->candidate_spread[k]))
      throw Failure{"layer " + std::to_string(k) + ": null candidate_bits or candidate_spread"};
    s.width.push_back(b->layer_sizes[k]);
  }
  if (static_cast<int64_t>(s.width.back()) != static_cast<int64_t>(s.out_features) * s.group)
    throw Failure{"last layer has " + std::to_string(s.width.back()) + " LUTs, not out_features * group_size"};
  s.max_width = *std::max_element(s.width.begin(), s.width.end());
  return s;
}

// Every mapping (and candidate) index must name a bit of the layer's input (checked per forward: the
// buffers are mutable).
void check_indices(const int32_t* index, int64_t count, int limit, const char* what, int k) {
  for (int64_t i = 0; i < count; ++i) {
    if (index[i] < 0 || index[i] >= limit)
      throw Failure{std::string(what) + " of layer " + std::to_string(k) + ": entry " + std::to_string(i) + " is " +
                    std::to_string(index[i]) + ", outside [0, " + std::to_string(limit) + ")"};
  }
}

void check_mapping(const QuweitTrainBlock* b, const Shape& s) {
  for (int k = 0; k < s.layers; ++k) {
    const int64_t slots = static_cast<int64_t>(s.lut_count(k)) * s.n;
    check_indices(b->mapping[k], slots, s.width[k], "mapping", k);
    if (s.candidates > 1) check_indices(b->candidate_bits[k], slots * s.candidates, s.width[k], "candidates", k);
  }
}

// Runs fn(task) for task in [0, tasks) on up to `threads` threads; tasks are taken in order from a shared
// counter. Each task writes only its own outputs, so which thread runs it does not change the result.
template <typename Fn>
void parallel_tasks(int64_t tasks, int threads, const Fn& fn) {
  const int64_t workers = std::min<int64_t>(std::max(threads, 1), tasks);
  if (workers <= 1) {
    for (int64_t task = 0; task < tasks; ++task) fn(task);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&]() {
    try {
      for (int64_t task = next++; task < tasks && !failed; task = next++) fn(task);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int64_t w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
}

// Table signs, bit-packed: bit a of row r is `tables[r, a] > 0` (NaN -> 0), as the forward reads them.
std::vector<uint64_t> pack_signs(const float* table, int rows, const Shape& s) {
  std::vector<uint64_t> packed(static_cast<size_t>(rows) * s.words, 0);
  for (int r = 0; r < rows; ++r) {
    const float* row = table + static_cast<int64_t>(r) * s.entries;
    uint64_t* out = packed.data() + static_cast<size_t>(r) * s.words;
    for (int a = 0; a < s.entries; ++a) out[a >> 6] |= static_cast<uint64_t>(row[a] > 0.0f) << (a & 63);
  }
  return packed;
}

// Spec 3.1-3.2 as the shim computes them in float32: q = clamp(round(x * scale)) (NaN -> 0), bit = q > thr.
void thermometer(const QuweitTrainBlock* b, const Shape& s, const float* x, uint8_t* bits) {
  for (int i = 0; i < s.in_features; ++i) {
    const float p = x[i] * b->input_scale[i];
    float q = std::nearbyint(p);  // round half to even (default rounding mode)
    q = std::isnan(q) ? 0.0f : std::min(std::max(q, b->qmin), b->qmax);
    const float* thr = b->thresholds + static_cast<int64_t>(i) * s.thresholds;
    uint8_t* out = bits + static_cast<int64_t>(i) * s.thresholds;
    for (int t = 0; t < s.thresholds; ++t) out[t] = q > thr[t];
  }
}

// The surrogate gradient of the thermometer (torch_block.Thermometer.backward), per token: the slopes in one
// loop (the compiler vectorises it), their weighted sum over the T thresholds in order in another.
void thermometer_backward(const QuweitTrainBlock* b, const Shape& s, const float* x, const float* grad_bits,
                          float* slope, float* grad_x) {
  for (int i = 0; i < s.in_features; ++i) {
    const float scale = b->input_scale[i];
    const float p = x[i] * scale;
    const bool nan = std::isnan(p);
    const float finite = nan ? 0.0f : std::isinf(p) ? std::copysign(FLT_MAX, p) : p;  // torch.nan_to_num
    const float width = b->surrogate_width[i];
    const float* thr = b->thresholds + static_cast<int64_t>(i) * s.thresholds;
    for (int t = 0; t < s.thresholds; ++t) {
      const float distance = finite - (thr[t] + 0.5f);
      const float raw = 1.0f - std::fabs(distance) / width;
      slope[t] = (raw < 0.0f ? 0.0f : raw) / width;
    }
    const float* g = grad_bits + static_cast<int64_t>(i) * s.thresholds;
    float total = 0.0f;
    for (int t = 0; t < s.thresholds; ++t) total += g[t] * (nan ? 0.0f : slope[t]);
    grad_x[i] = total * scale;
  }
}

// The per-(token, LUT) loops, compiled for each LUT width N so the slot loops unroll.
template <int N>
struct Lut {
  static constexpr int kEntries = 1 << N;
  static constexpr int kWords = kEntries > 64 ? kEntries / 64 : 1;
  // Each token reads one n-float EFD record per LUT, scattered over the whole weight array (L * 2^n * n
  // floats, megabytes): records are fetched kPrefetch LUTs ahead so their cache misses overlap.
  static constexpr int kPrefetch = 16;

  static inline uint8_t sign(const uint64_t* __restrict packed, int64_t row, unsigned a) {
    if constexpr (kWords == 1) return static_cast<uint8_t>((packed[row] >> a) & 1u);
    return static_cast<uint8_t>((packed[row * kWords + (a >> 6)] >> (a & 63)) & 1u);
  }

  static inline const float* record(const float* weight, int64_t r, unsigned a) {
    return weight + (r * kEntries + a) * N;
  }

  static inline void prefetch(const float* weight, const uint8_t* address, int r, int luts) {
    if (r + kPrefetch < luts) {
      const float* ahead = record(weight, r + kPrefetch, address[r + kPrefetch]);
      __builtin_prefetch(ahead);
      __builtin_prefetch(ahead + N - 1);
    }
  }

  // One token through one layer: each LUT's address (slot l -> address bit l) and output bit.
  static void forward(const uint8_t* __restrict in, const int32_t* __restrict map, const uint64_t* __restrict sign_bits,
                      int luts, uint8_t* __restrict address, uint8_t* __restrict out) {
    for (int r = 0; r < luts; ++r) {
      const int32_t* m = map + static_cast<int64_t>(r) * N;
      unsigned a = 0;
#pragma GCC unroll 8
      for (int l = 0; l < N; ++l) a |= static_cast<unsigned>(in[m[l]]) << l;
      address[r] = static_cast<uint8_t>(a);
      out[r] = sign(sign_bits, r, a);
    }
  }

  // One token's input-bit gradients of one layer, fixed mapping: dst[map[r, l]] += g[r] * weight[r, a_r, l],
  // in (LUT, slot) order (efd.LutLayerEFD then learnable_mapping.SelectBits' index_add_). dst must be zeroed.
  static void input_grad(const float* __restrict g, const uint8_t* __restrict address, const int32_t* __restrict map,
                         const float* __restrict weight, int luts, float* __restrict dst) {
    for (int r = 0; r < luts; ++r) {
      prefetch(weight, address, r, luts);
      const float gr = g[r];
      const float* w = record(weight, r, address[r]);
      const int32_t* m = map + static_cast<int64_t>(r) * N;
#pragma GCC unroll 8
      for (int l = 0; l < N; ++l) dst[m[l]] += gr * w[l];
    }
  }

  // The same with C candidates per slot: slot s's gradient g[r] * weight[r, a_r, l] goes to each candidate bit
  // in the share spread[s, c], in (LUT, slot, candidate) order (SelectBits' index_add_ over candidates).
  static void input_grad_spread(const float* __restrict g, const uint8_t* __restrict address,
                                const int32_t* __restrict cand, const float* __restrict spread, int candidates,
                                const float* __restrict weight, int luts, float* __restrict dst) {
    for (int r = 0; r < luts; ++r) {
      prefetch(weight, address, r, luts);
      const float gr = g[r];
      const float* w = record(weight, r, address[r]);
      for (int l = 0; l < N; ++l) {
        const float slot = gr * w[l];
        const int64_t first = (static_cast<int64_t>(r) * N + l) * candidates;
        for (int c = 0; c < candidates; ++c) dst[cand[first + c]] += slot * spread[first + c];
      }
    }
  }
};

template <int N>
void forward_n(const QuweitTrainBlock* b, const Shape& s, const float* x, float* acc, uint8_t* const* addresses,
               uint64_t* const* input_bits, int threads) {
  std::vector<std::vector<uint64_t>> signs;
  for (int k = 0; k < s.layers; ++k) signs.push_back(pack_signs(b->tables[k], s.lut_count(k), s));
  const int64_t tasks = (s.tokens + kTokenChunk - 1) / kTokenChunk;
  const bool keep_inputs = input_bits != nullptr;
  parallel_tasks(tasks, threads, [&](int64_t task) {
    std::vector<uint8_t> current(s.max_width), next(s.max_width);
    // This task's word (its 64 tokens) of every input bit's token row, per layer (kept for the mapping weights).
    std::vector<std::vector<uint64_t>> token_bits(keep_inputs ? s.layers : 0);
    for (int k = 0; k < static_cast<int>(token_bits.size()); ++k) token_bits[k].assign(s.width[k], 0);
    const int64_t end = std::min(s.tokens, (task + 1) * kTokenChunk);
    const float* values = b->values;
    const float* bias = b->bias;
    for (int64_t t = task * kTokenChunk; t < end; ++t) {
      thermometer(b, s, x + t * s.in_features, current.data());
      for (int k = 0; k < s.layers; ++k) {
        const int luts = s.lut_count(k);
        if (keep_inputs) {
          uint64_t* word = token_bits[k].data();
          for (int i = 0; i < s.width[k]; ++i) word[i] |= static_cast<uint64_t>(current[i]) << (t & 63);
        }
        Lut<N>::forward(current.data(), b->mapping[k], signs[k].data(), luts, addresses[k] + t * luts, next.data());
        std::swap(current, next);
      }
      // Conditional sum: integer-valued terms summed in double (exact below 2^53), rounded to float32 once,
      // as the op's integer accumulator converts (spec 3.5). bit * value keeps the shim's NaN/inf behaviour.
      float* out = acc + t * s.out_features;
      const uint8_t* bits = current.data();
      for (int o = 0; o < s.out_features; ++o) {
        const int64_t first = static_cast<int64_t>(o) * s.group;
        double total = 0.0;
        for (int g = 0; g < s.group; ++g)
          total += static_cast<double>(bits[first + g]) * static_cast<double>(values[first + g]);
        out[o] = static_cast<float>(total + static_cast<double>(bias[o]));
      }
    }
    for (int k = 0; k < static_cast<int>(token_bits.size()); ++k)
      for (int i = 0; i < s.width[k]; ++i) input_bits[k][i * s.token_words() + task] = token_bits[k][i];
  });
}

// sum over tokens t of (bit t of `bits` ? +g[t] : -g[t]) for `count` tokens (from a multiple of 64), in eight
// float32 lanes (lane j: tokens t = j mod 8 in order; the last count % 8 tokens go to lanes 0, 1, ...), then
// ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)): the same result with SSE2 (x86-64 baseline) or without.
float signed_sum(const float* g, const uint64_t* bits, int64_t count) {
  const int64_t body = count & ~int64_t{7};
  float lane[8];
#if defined(__SSE2__)
  // Sign-flip masks for the 16 values of 4 bits: lane j negated where bit j is 0.
  alignas(16) static const uint32_t flips[16][4] = {
#define QUWEIT_FLIP(v) {((v) & 1) ? 0u : 0x80000000u, ((v) & 2) ? 0u : 0x80000000u, ((v) & 4) ? 0u : 0x80000000u, ((v) & 8) ? 0u : 0x80000000u}
      QUWEIT_FLIP(0), QUWEIT_FLIP(1), QUWEIT_FLIP(2),  QUWEIT_FLIP(3),  QUWEIT_FLIP(4),  QUWEIT_FLIP(5),
      QUWEIT_FLIP(6), QUWEIT_FLIP(7), QUWEIT_FLIP(8),  QUWEIT_FLIP(9),  QUWEIT_FLIP(10), QUWEIT_FLIP(11),
      QUWEIT_FLIP(12), QUWEIT_FLIP(13), QUWEIT_FLIP(14), QUWEIT_FLIP(15)};
#undef QUWEIT_FLIP
  // Two accumulators (lanes 0-3 and 4-7): the additions of consecutive steps do not wait for each other.
  __m128 low = _mm_setzero_ps(), high = _mm_setzero_ps();
  for (int64_t t = 0; t < body; t += 8) {
    const unsigned byte = static_cast<unsigned>(bits[t >> 6] >> (t & 63)) & 255u;
    const __m128 flip_low = _mm_load_ps(reinterpret_cast<const float*>(flips[byte & 15u]));
    const __m128 flip_high = _mm_load_ps(reinterpret_cast<const float*>(flips[byte >> 4]));
    low = _mm_add_ps(low, _mm_xor_ps(_mm_loadu_ps(g + t), flip_low));
    high = _mm_add_ps(high, _mm_xor_ps(_mm_loadu_ps(g + t + 4), flip_high));
  }
  _mm_storeu_ps(lane, low);
  _mm_storeu_ps(lane + 4, high);
#else
  for (float& l : lane) l = 0.0f;
  for (int64_t t = 0; t < body; t += 8)
    for (int j = 0; j < 8; ++j) lane[j] += ((bits[(t + j) >> 6] >> ((t + j) & 63)) & 1u) ? g[t + j] : -g[t + j];
#endif
  for (int64_t t = body, j = 0; t < count; ++t, ++j) lane[j] += ((bits[t >> 6] >> (t & 63)) & 1u) ? g[t] : -g[t];
  return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

struct Gradients {
  float* x;
  float* const* tables;  // may be null as a whole
  float* values;
  float* bias;
  float* const* weights;  // may be null as a whole
  bool table(int k) const { return tables && tables[k]; }
  bool weight(int k) const { return weights && weights[k]; }
};

template <int N>
void backward_n(const QuweitTrainBlock* b, const Shape& s, const float* x, const uint8_t* const* addresses,
                const uint64_t* const* input_bits, const float* const* per_address, const float* grad_acc,
                const Gradients& out, int threads) {
  constexpr int E = Lut<N>::kEntries;
  const int top = s.layers - 1, C = s.candidates;
  const int64_t top_luts = s.lut_count(top);
  const int group = s.group, outputs = s.out_features;
  const float* values = b->values;
  // needs_input[k]: the gradient of layer k's input bits is wanted (for x, or for a lower layer's tables or
  // mapping weights).
  std::vector<bool> needs_input(s.layers, false);
  bool below = out.x != nullptr;
  for (int k = 0; k < s.layers; ++k) {
    needs_input[k] = below;
    below = below || out.table(k) || out.weight(k);
  }
  int lowest = s.layers;  // lowest layer whose input gradient is needed
  for (int k = s.layers - 1; k >= 0 && needs_input[k]; --k) lowest = k;
  for (int k = 0; k < s.layers; ++k) {
    if ((needs_input[k] || out.weight(k)) && (!per_address || !per_address[k]))
      throw Failure{"per_address of layer " + std::to_string(k) + " is null"};
    if (out.weight(k) && (C == 1 || !input_bits || !input_bits[k]))
      throw Failure{"mapping-weight gradient of layer " + std::to_string(k) + " needs candidates > 1 and input_bits"};
  }

  // The gradient of LUT layer k's output bits, [B, L_k], stored for the hidden layers that need it; the top
  // layer's is grad_acc[t, o] * values[j], formed where it is used (the shim's `grouped * values` backward).
  std::vector<std::vector<float>> hidden_grad(s.layers);
  for (int k = std::max(lowest - 1, 0); k < top; ++k) hidden_grad[k].resize(s.tokens * s.lut_count(k));

  // Pass 1, over token chunks: input-bit gradients layer by layer down (EFD; the contributions to each bit in
  // (LUT, slot[, candidate]) order, as the shim's index_add_ adds them), then the thermometer's surrogate to x.
  if (lowest < s.layers) {
    const int64_t tasks = (s.tokens + kTokenChunk - 1) / kTokenChunk;
    parallel_tasks(tasks, threads, [&](int64_t task) {
      std::vector<float> top_row(top_luts), bit_row(lowest == 0 ? s.width[0] : 0), slope(s.thresholds);
      const int64_t end = std::min(s.tokens, (task + 1) * kTokenChunk);
      for (int64_t t = task * kTokenChunk; t < end; ++t) {
        const float* ga = grad_acc + t * outputs;
        for (int o = 0, j = 0; o < outputs; ++o)
          for (int g = 0; g < group; ++g, ++j) top_row[j] = ga[o] * values[j];
        const float* g = top_row.data();
        for (int k = top; k >= lowest; --k) {
          const int luts = s.lut_count(k);
          float* dst = k > 0 ? hidden_grad[k - 1].data() + t * s.width[k] : bit_row.data();
          std::fill_n(dst, s.width[k], 0.0f);
          if (C == 1)
            Lut<N>::input_grad(g, addresses[k] + t * luts, b->mapping[k], per_address[k], luts, dst);
          else
            Lut<N>::input_grad_spread(g, addresses[k] + t * luts, b->candidate_bits[k], b->candidate_spread[k], C,
                                      per_address[k], luts, dst);
          g = dst;
        }
        if (lowest == 0)
          thermometer_backward(b, s, x + t * s.in_features, bit_row.data(), slope.data(), out.x + t * s.in_features);
      }
    });
  }

  // Pass 2, over LUT blocks (and output blocks for the bias): table gradients summed over tokens in token
  // order (the shim's index_add_ order); value and mapping-weight gradients in double.
  struct Task {
    int layer;  // -1: bias block
    int64_t first, last;
  };
  std::vector<Task> tasks;
  for (int k = 0; k < s.layers; ++k) {
    if (!out.table(k) && !out.weight(k) && !(k == top && out.values)) continue;
    const int block = out.weight(k) ? kWeightLutBlock : kLutBlock;
    for (int64_t r = 0; r < s.lut_count(k); r += block)
      tasks.push_back({k, r, std::min<int64_t>(r + block, s.lut_count(k))});
  }
  if (out.bias)
    for (int64_t o = 0; o < outputs; o += kOutputBlock) tasks.push_back({-1, o, std::min<int64_t>(o + kOutputBlock, outputs)});
  std::vector<uint64_t> top_signs;
  if (out.values) top_signs = pack_signs(b->tables[top], s.lut_count(top), s);
  parallel_tasks(static_cast<int64_t>(tasks.size()), threads, [&](int64_t index) {
    const Task task = tasks[index];
    const int count = static_cast<int>(task.last - task.first);
    if (task.layer < 0) {
      double total[kOutputBlock] = {};
      for (int64_t t = 0; t < s.tokens; ++t) {
        const float* row = grad_acc + t * outputs + task.first;
        for (int o = 0; o < count; ++o) total[o] += row[o];
      }
      for (int o = 0; o < count; ++o) out.bias[task.first + o] = static_cast<float>(total[o]);
      return;
    }
    const int k = task.layer;
    const int64_t luts = s.lut_count(k);
    const bool tables_wanted = out.table(k), values_wanted = k == top && out.values, weights_wanted = out.weight(k);
    std::vector<float> rows(tables_wanted ? static_cast<size_t>(count) * E : 0, 0.0f);
    float* __restrict row = rows.data();
    // Per LUT of the block: output index and value (top layer), sign bits (value gradient).
    int output[kLutBlock];
    float value[kLutBlock];
    uint64_t signs[kLutBlock * Lut<N>::kWords];
    double value_total[kLutBlock] = {};
    if (k == top) {
      for (int i = 0; i < count; ++i) {
        output[i] = static_cast<int>((task.first + i) / group);
        value[i] = values[task.first + i];
      }
      if (values_wanted) std::copy_n(top_signs.data() + task.first * Lut<N>::kWords, count * Lut<N>::kWords, signs);
    }
    // Mapping weights: sum over tokens of (2 * bit(candidate) - 1) * slot gradient, per (slot, candidate): the
    // slot gradients of a chunk of tokens are laid out per slot, then summed against each candidate's token
    // row (float32 lanes per chunk, chunks added in double).
    const int64_t chunk = weights_wanted ? std::min(kWeightTokens, s.tokens) : 0;
    // Row stride of one cache line more than the chunk: a power-of-two stride would map the rows written for
    // one token onto a few cache sets.
    const int64_t stride = chunk + 16;
    std::vector<float> slot_grad(weights_wanted ? static_cast<size_t>(count) * N * stride : 0);
    std::vector<double> weight_total(weights_wanted ? static_cast<size_t>(count) * N * C : 0, 0.0);
    float g[kLutBlock];
    for (int64_t start = 0; start < s.tokens; start += weights_wanted ? chunk : s.tokens) {
      const int64_t stop = weights_wanted ? std::min(s.tokens, start + chunk) : s.tokens;
      for (int64_t t = start; t < stop; ++t) {
        const uint8_t* __restrict address = addresses[k] + t * luts + task.first;
        if (k == top) {
          const float* __restrict ga = grad_acc + t * outputs;
          for (int i = 0; i < count; ++i) g[i] = ga[output[i]] * value[i];
          if (values_wanted)
            for (int i = 0; i < count; ++i)
              value_total[i] += static_cast<double>(ga[output[i]]) * Lut<N>::sign(signs, i, address[i]);
        } else {
          std::copy_n(hidden_grad[k].data() + t * luts + task.first, count, g);
        }
        if (tables_wanted)
          for (int i = 0; i < count; ++i) row[i * E + address[i]] += g[i];
        if (weights_wanted)
          for (int i = 0; i < count; ++i) {
            const float* w = Lut<N>::record(per_address[k], task.first + i, address[i]);
            for (int l = 0; l < N; ++l) slot_grad[(static_cast<int64_t>(i) * N + l) * stride + (t - start)] = g[i] * w[l];
          }
      }
      if (weights_wanted) {
        const int64_t words = s.token_words();
        for (int64_t slot = 0; slot < static_cast<int64_t>(count) * N; ++slot) {
          const int32_t* cand = b->candidate_bits[k] + (task.first * N + slot) * C;
          const float* grad = slot_grad.data() + slot * stride;
          for (int c = 0; c < C; ++c)
            weight_total[slot * C + c] += signed_sum(grad, input_bits[k] + cand[c] * words + start / 64, stop - start);
        }
      }
    }
    if (tables_wanted) std::copy(rows.begin(), rows.end(), out.tables[k] + task.first * E);
    if (values_wanted)
      for (int i = 0; i < count; ++i) out.values[task.first + i] = static_cast<float>(value_total[i]);
    if (weights_wanted)
      for (size_t i = 0; i < weight_total.size(); ++i)
        out.weights[k][task.first * N * C + static_cast<int64_t>(i)] = static_cast<float>(weight_total[i]);
  });
}

template <template <int> class Fn, typename... Args>
void dispatch(int n, Args&&... args) {
  switch (n) {
    case 1: return Fn<1>::run(args...);
    case 2: return Fn<2>::run(args...);
    case 3: return Fn<3>::run(args...);
    case 4: return Fn<4>::run(args...);
    case 5: return Fn<5>::run(args...);
    case 6: return Fn<6>::run(args...);
    case 7: return Fn<7>::run(args...);
    case 8: return Fn<8>::run(args...);
  }
  throw Failure{"lut_inputs must be in 1..8, got " + std::to_string(n)};
}

template <int N>
struct Forward {
  template <typename... Args>
  static void run(Args&&... args) { forward_n<N>(args...); }
};

template <int N>
struct Backward {
  template <typename... Args>
  static void run(Args&&... args) { backward_n<N>(args...); }
};

void check_layers(const Shape& s, const void* const* per_layer, const char* what) {
  if (!per_layer) throw Failure{std::string(what) + " is null"};
  for (int k = 0; k < s.layers; ++k)
    if (!per_layer[k]) throw Failure{std::string(what) + " of layer " + std::to_string(k) + " is null"};
}

void forward(const QuweitTrainBlock* b, const float* x, float* acc, uint8_t* const* addresses,
             uint64_t* const* input_bits, int threads) {
  const Shape s = validate(b);
  check_mapping(b, s);
  if (s.tokens == 0) return;  // (empty tensors may have null data pointers)
  if (!x || !acc) throw Failure{"x or acc is null"};
  check_layers(s, reinterpret_cast<const void* const*>(addresses), "addresses");
  dispatch<Forward>(s.n, b, s, x, acc, addresses, input_bits, threads);
}

void backward(const QuweitTrainBlock* b, const float* x, const uint8_t* const* addresses,
              const uint64_t* const* input_bits, const float* const* per_address, const float* grad_acc,
              const Gradients& out, int threads) {
  const Shape s = validate(b);
  if (s.tokens == 0) {  // gradients of nothing: zeros (grad_x has no elements; empty tensors' pointers may be null)
    for (int k = 0; k < s.layers; ++k) {
      if (out.table(k)) std::fill_n(out.tables[k], static_cast<int64_t>(s.lut_count(k)) * s.entries, 0.0f);
      if (out.weight(k)) std::fill_n(out.weights[k], static_cast<int64_t>(s.lut_count(k)) * s.n * s.candidates, 0.0f);
    }
    if (out.values) std::fill_n(out.values, s.width.back(), 0.0f);
    if (out.bias) std::fill_n(out.bias, s.out_features, 0.0f);
    return;
  }
  if (!x || !grad_acc) throw Failure{"x or grad_acc is null"};
  check_layers(s, reinterpret_cast<const void* const*>(addresses), "addresses");
  dispatch<Backward>(s.n, b, s, x, addresses, input_bits, per_address, grad_acc, out, threads);
}

int report(const char* what, char* error, size_t error_size) {
  if (error && error_size) std::snprintf(error, error_size, "%s", what);
  return 1;
}

template <typename Fn>
int guarded(char* error, size_t error_size, const Fn& fn) {
  try {
    fn();
    return 0;
  } catch (const Failure& failure) {
    return report(failure.message.c_str(), error, error_size);
  } catch (const std::bad_alloc&) {
    return report("out of memory", error, error_size);
  } catch (const std::exception& e) {
    return report(e.what(), error, error_size);
  } catch (...) {
    return report("unknown error", error, error_size);
  }
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int quweit_train_forward(const QuweitTrainBlock* block, const float* x,
                                                                float* acc, uint8_t* const* addresses,
                                                                uint64_t* const* input_bits, int threads,
                                                                char* error, size_t error_size) {
  return guarded(error, error_size, [&] { forward(block, x, acc, addresses, input_bits, threads); });
}

__attribute__((visibility("default"))) int quweit_train_backward(
    const QuweitTrainBlock* block, const float* x, const uint8_t* const* addresses, const uint64_t* const* input_bits,
    const float* const* per_address, const float* grad_acc, float* grad_x, float* const* grad_tables,
    float* grad_values, float* grad_bias, float* const* grad_weights, int threads, char* error, size_t error_size) {
  return guarded(error, error_size, [&] {
    backward(block, x, addresses, input_bits, per_address, grad_acc,
             Gradients{grad_x, grad_tables, grad_values, grad_bias, grad_weights}, threads);
  });
}
}
