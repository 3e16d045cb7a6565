// Reading and validating a WeightlessBlock node's attributes and constant parameter inputs at kernel
// creation (docs/weightless_block.md section 5), so Compute never re-checks them and never reads out
// of bounds. Errors carry the node, the parameter and the offending value, like the Python validator.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "block_plan.h"
#include "ort_api.h"

namespace quweit {

// A violation of the specification; the message reads
// "WeightlessBlock node '<node>': parameter '<parameter>': <problem>" (same text as the Python side).
class BlockError : public std::runtime_error {
 public:
  BlockError(const std::string& node, const std::string& parameter, const std::string& problem);
};

// Owns the validated parameters, laid out for the tile evaluators.
struct BlockParams {
  std::string node;
  int32_t in_features = 0, out_features = 0, thresholds_per_feature = 0, lut_inputs = 0, input_bits = 0;
  std::vector<int32_t> layer_sizes, layer_offsets;
  std::vector<float> input_scale, output_scale;
  std::vector<int16_t> thresholds;
  std::vector<int32_t> mapping, encoded_values, bias;
  std::vector<uint64_t> tables;

  BlockPlan plan() const;
};

// Reads attributes and the constant inputs 1..7 of the node; throws BlockError.
BlockParams read_block_params(const Ort::ConstKernelInfo& info);

}  // namespace quweit
