// C interface of the fused training ops of WeightlessBlock (train_block.cc), for the torch shim
// (custom_ops/fused_training.py calls it through ctypes on tensor data pointers: no torch headers here).
//
// One forward and one backward call cover the whole block: thermometer -> LUT layers -> conditional sum.
// The numerics are those of the shim's per-stage torch path (custom_ops/torch_block.py, efd.py,
// learnable_mapping.py with one candidate per slot); see fused_training.py for what is equal bit for bit and
// what only up to float summation order.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// Structure and parameters of one block in training mode; every array is float32/int32, C-contiguous.
struct QuweitTrainBlock {
  int64_t tokens;                  // B
  int32_t in_features;             // D_in
  int32_t thresholds_per_feature;  // T
  int32_t lut_inputs;              // n (1..8)
  int32_t num_layers;              // K
  int32_t out_features;            // D_out
  int32_t group_size;              // G = L_{K-1} / D_out
  float qmin, qmax;                // input quantization range
  const int32_t* layer_sizes;      // [K]
  const float* input_scale;        // [D_in]
  const float* thresholds;         // [D_in * T] (integer-valued)
  const float* surrogate_width;    // [D_in] thermometer surrogate-gradient width
  const int32_t* const* mapping;   // K pointers: [L_k * n], indices into layer k's input bits
  const float* const* tables;      // K pointers: [L_k * 2^n] real table entries
  const float* values;             // [L_{K-1}] encoded values (integer-valued after rounding)
  const float* bias;               // [D_out] (integer-valued after rounding)
  // Learnable mapping (custom_ops/learnable_mapping.py): slot s of layer k reads mapping[k][s], the chosen one
  // of its C candidates. With C == 1 the two pointers below are unused (may be null).
  int32_t candidates;                     // C >= 1
  const int32_t* const* candidate_bits;   // K pointers: [L_k * n * C] candidate input bits per slot
  const float* const* candidate_spread;   // K pointers: [L_k * n * C] softmax(weights / tau), the input-bit
                                          // gradient's share per candidate
};

// acc [B, D_out] = bias + sum of the values of the group's LUTs that are 1 (exact: summed in double, rounded
// once); addresses[k] [B, L_k] (uint8) receive each LUT's address for the backward; input_bits (null, or K
// pointers to [N_k, ceil(B / 64)] uint64) receive layer k's input bits, one row of packed tokens per input bit
// (bit t of a row: token t), which the mapping-weight gradient reads. Returns 0, or nonzero with a message in `error` (a mapping index out of
// range, a null pointer, an unsupported size).
int quweit_train_forward(const QuweitTrainBlock* block, const float* x, float* acc, uint8_t* const* addresses,
                         uint64_t* const* input_bits, int threads, char* error, size_t error_size);

// Gradients from dL/dacc [B, D_out]. Any output pointer may be null (not wanted): grad_x [B, D_in],
// grad_tables[k] [L_k * 2^n], grad_values [L_{K-1}], grad_bias [D_out], grad_weights[k] [L_k * n * C] (the
// mapping weights; needs input_bits[k]). per_address[k] [L_k * 2^n * n] is the EFD input-gradient weight of
// each (LUT, address, slot); it is read only for layers whose input gradient is needed (grad_x, or a gradient
// of a lower layer's tables or mapping weights) or whose mapping-weight gradient is wanted, and may be null
// elsewhere.
int quweit_train_backward(const QuweitTrainBlock* block, const float* x, const uint8_t* const* addresses,
                          const uint64_t* const* input_bits, const float* const* per_address,
                          const float* grad_acc, float* grad_x, float* const* grad_tables, float* grad_values,
                          float* grad_bias, float* const* grad_weights, int threads, char* error,
                          size_t error_size);
}
