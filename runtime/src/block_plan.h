// The evaluation plan of one WeightlessBlock node: structure and parameters, validated and laid out for
// the kernel once at kernel creation (block_params.cc), then read by the per-ISA tile evaluators.
// Plain C data only, so the ISA translation units need no standard-library templates.
#pragma once

#include <cstddef>
#include <cstdint>

namespace quweit {

struct BlockPlan {
  int32_t in_features;             // D_in
  int32_t out_features;            // D_out
  int32_t thresholds_per_feature;  // T
  int32_t lut_inputs;              // n
  int32_t num_layers;              // K
  int32_t group_size;              // G = L_{K-1} / D_out
  int32_t words_per_table;         // W
  int32_t max_layer_bits;          // max(N_0, L_0, ..., L_{K-1}): bit planes per scratch buffer
  float qmin, qmax;                // quantization range as floats (exact: |q| <= 2^15)
  const int32_t* layer_sizes;      // [K]
  const int32_t* layer_offsets;    // [K] first global LUT row of each layer
  const float* input_scale;        // [D_in]
  const int16_t* thresholds;       // [D_in * T], already in [qmin, qmax]
  const int32_t* mapping;          // [L * n]
  const uint64_t* tables;          // [L * W]
  const int32_t* encoded_values;   // [L_{K-1}]
  const int32_t* bias;             // [D_out]
  const float* output_scale;       // [D_out]
  // Layouts derived for the byte-sliced path (block_layouts.h).
  int32_t lut_bytes;               // bytes per LUT in lut_tables: 16, or 32 for n = 8
  int32_t sum_groups;              // ceil(G / 4): LUT outputs summed four at a time
  const uint8_t* lut_tables;       // [L, lut_bytes] byte-shuffle tables of the truth tables
  const uint8_t* sum_planes;       // [D_out, sum_groups, 4, 16] partial sums as little-endian byte planes
  // Layouts derived for the direct (per-token) path (block_layouts.h); rows in the path's own order.
  int32_t direct_features;             // D_in rounded up to 64
  int32_t direct_outputs;              // D_out rounded up to 16
  int32_t direct_rows;                 // rows of direct_mapping / direct_tables
  const int32_t* direct_copy_bytes;    // [K] bytes of one pre-shifted copy of layer k's input bits
  const int32_t* direct_row_offsets;   // [K] first row of layer k
  const int16_t* direct_thresholds;    // [T, direct_features], threshold-major
  const int32_t* direct_mapping;       // [direct_rows, n] byte offsets into the copies, or nullptr and
  const uint16_t* direct_mapping16;    // the same as uint16 when they fit
  const uint64_t* direct_tables;       // [direct_rows, W]
  const int32_t* direct_values;        // [direct_outputs * G] in the last layer's row order
  const int32_t* direct_bias;          // [direct_outputs]
  const float* direct_scale;           // [direct_outputs]
};

// The most int32 lanes of any ISA's vectors: bounds the staging buffers (kLanes rows of a tile).
constexpr int kMaxLanes = 16;

// Evaluates `count` tokens starting at token `begin` of X [M, D_in] into Y [M, D_out]. A tile holds up to
// 64 * words tokens, bit-sliced: one bit plane of `words` uint64 per thermometer/LUT bit.
// `scratch` must hold tile_scratch_bytes(plan, words) bytes, 64-byte aligned.
using TileFn = void (*)(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count,
                        void* scratch);

inline size_t tile_scratch_bytes(const BlockPlan& plan, int words) {
  const size_t tokens = 64u * static_cast<size_t>(words);
  const size_t planes = 2u * static_cast<size_t>(plan.max_layer_bits) * words * sizeof(uint64_t);
  const size_t q = kMaxLanes * tokens * sizeof(int16_t);
  const size_t y = kMaxLanes * tokens * sizeof(float);
  return planes + q + y + 3 * 64;
}

// A path that evaluates tiles of up to `tokens` tokens in steps: `tile` runs the whole block on one
// thread; `encode`, `layer` and `outputs` are its steps, so one tile's LUTs can be shared among
// threads: encode (thermometer into the shared scratch), then each hidden layer k's LUTs
// [j_begin, j_end), then outputs [o_begin, o_end) (last layer, sums, Y; multiples of 16 except at the
// end; `own` is the calling thread's scratch for staging). Every scratch holds scratch_bytes(plan).
struct PathKernels {
  int tokens;
  size_t (*scratch_bytes)(const BlockPlan& plan);
  TileFn tile;
  void (*encode)(const BlockPlan& plan, const float* x, int64_t begin, int64_t count, void* scratch);
  void (*layer)(const BlockPlan& plan, int k, void* scratch, int64_t j_begin, int64_t j_end);
  void (*outputs)(const BlockPlan& plan, float* y, int64_t begin, int64_t count, int64_t o_begin, int64_t o_end,
                  const void* shared, void* own);
};

// Evaluators of one instruction set: bit-sliced tiles of 1, 2, 4 and 8 words (64 to 512 tokens; wider
// than `max_words` is emulated with narrower vectors and is slower), the direct (per-token) path and
// the byte-sliced path.
struct IsaKernels {
  const char* name;
  TileFn tile[4];
  int max_words;
  const PathKernels* direct;
  const PathKernels* byteslice;
};

const IsaKernels& generic_kernels();  // x86-64 baseline (SSE2)
const IsaKernels& avx2_kernels();     // AVX2
const IsaKernels& avx512_kernels();   // AVX-512 F + BW (direct and byte-sliced paths: the AVX2 ones)

}  // namespace quweit
