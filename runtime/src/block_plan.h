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
};

// Features quantized and outputs written per block in a tile (small transposed staging buffers).
constexpr int kFeatureBlock = 16;
constexpr int kOutputBlock = 16;

// Evaluates `count` tokens starting at token `begin` of X [M, D_in] into Y [M, D_out]. A tile holds up to
// 64 * words tokens, bit-sliced: one bit plane of `words` uint64 per thermometer/LUT bit.
// `scratch` must hold tile_scratch_bytes(plan, words) bytes, 64-byte aligned.
using TileFn = void (*)(const BlockPlan& plan, const float* x, float* y, int64_t begin, int64_t count,
                        void* scratch);

inline size_t tile_scratch_bytes(const BlockPlan& plan, int words) {
  const size_t tokens = 64u * static_cast<size_t>(words);
  const size_t planes = 2u * static_cast<size_t>(plan.max_layer_bits) * words * sizeof(uint64_t);
  const size_t q = kFeatureBlock * tokens * sizeof(int16_t);
  const size_t y = kOutputBlock * tokens * sizeof(float);
  return planes + q + y + 3 * 64;
}

// Tile evaluators of one instruction set, for tiles of 1, 2, 4 and 8 words (64 to 512 tokens).
struct IsaKernels {
  const char* name;
  TileFn tile[4];
};

const IsaKernels& generic_kernels();  // x86-64 baseline (SSE2)
const IsaKernels& avx2_kernels();     // AVX2
const IsaKernels& avx512_kernels();   // AVX-512 F + BW

}  // namespace quweit
