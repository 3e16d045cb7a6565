// Derivation of the byte-sliced and direct paths' layouts (see block_layouts.h).
#include "block_layouts.h"

#include <cstdint>

namespace quweit {
namespace {

int table_bit(const BlockParams& params, int64_t row, int address) {
  const int words = params.lut_inputs <= 6 ? 1 : (1 << params.lut_inputs) / 64;
  return static_cast<int>((params.tables[row * words + (address >> 6)] >> (address & 63)) & 1u);
}

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

void derive_direct_layout(const BlockParams& params, DerivedLayouts& out) {
  const int64_t n = params.lut_inputs, t_per = params.thresholds_per_feature;
  const int64_t words = n <= 6 ? 1 : (int64_t{1} << n) / 64;
  const int64_t layers = static_cast<int64_t>(params.layer_sizes.size());
  const int64_t d_in = params.in_features, d_out = params.out_features;
  const int64_t group = params.layer_sizes.back() / d_out;
  const int64_t features = round_up(d_in, 64), outputs = round_up(d_out, 16);
  std::vector<int64_t> copy_bytes(layers), row_offsets(layers);
  int64_t rows = 0;
  for (int64_t k = 0; k < layers; ++k) {
    copy_bytes[k] = k == 0 ? t_per * features : round_up(params.layer_sizes[k - 1], 64);
    if (n * copy_bytes[k] > INT32_MAX) return;  // too large for int32 offsets: path not offered
    row_offsets[k] = rows;
    rows += k + 1 < layers ? params.layer_sizes[k] : outputs * group;
  }
  if (rows > INT32_MAX) return;
  out.direct_features = static_cast<int32_t>(features);
  out.direct_outputs = static_cast<int32_t>(outputs);
  out.direct_rows = static_cast<int32_t>(rows);
  out.direct_copy_bytes.assign(copy_bytes.begin(), copy_bytes.end());
  out.direct_row_offsets.assign(row_offsets.begin(), row_offsets.end());
  out.direct_thresholds.assign(static_cast<size_t>(t_per * features), INT16_MAX);
  for (int64_t i = 0; i < d_in; ++i)
    for (int64_t t = 0; t < t_per; ++t) out.direct_thresholds[t * features + i] = params.thresholds[i * t_per + t];
  // Every slot l of every row starts at position 0 of its copy l: the padding rows of the last layer
  // (outputs rounded up to 16) are evaluated and discarded, and an offset of 0 would read before copy l
  // (before the scratch itself for packed tokens).
  out.direct_mapping.assign(static_cast<size_t>(rows * n), 0);
  for (int64_t k = 0; k < layers; ++k) {
    const int64_t end = k + 1 < layers ? row_offsets[k + 1] : rows;
    for (int64_t row = row_offsets[k]; row < end; ++row)
      for (int64_t l = 0; l < n; ++l) out.direct_mapping[row * n + l] = static_cast<int32_t>(l * copy_bytes[k]);
  }
  out.direct_tables.assign(static_cast<size_t>(rows * words), 0);
  auto place = [&](int64_t k, int64_t row, int64_t spec_row) {
    for (int64_t l = 0; l < n; ++l) {
      const int64_t bit = params.mapping[spec_row * n + l];
      const int64_t position = k == 0 ? (bit % t_per) * features + bit / t_per : bit;
      out.direct_mapping[row * n + l] = static_cast<int32_t>(l * copy_bytes[k] + position);
    }
    for (int64_t w = 0; w < words; ++w) out.direct_tables[row * words + w] = params.tables[spec_row * words + w];
  };
  for (int64_t k = 0; k + 1 < layers; ++k)
    for (int64_t j = 0; j < params.layer_sizes[k]; ++j) place(k, row_offsets[k] + j, params.layer_offsets[k] + j);
  const int64_t last = layers - 1;
  out.direct_values.assign(static_cast<size_t>(outputs * group), 0);
  out.direct_bias.assign(static_cast<size_t>(outputs), 0);
  out.direct_scale.assign(static_cast<size_t>(outputs), 0.0f);
  for (int64_t o = 0; o < d_out; ++o) {
    out.direct_bias[o] = params.bias[o];
    out.direct_scale[o] = params.output_scale[o];
    for (int64_t g = 0; g < group; ++g) {
      const int64_t p = (o / 16 * group + g) * 16 + o % 16;
      place(last, row_offsets[last] + p, params.layer_offsets[last] + o * group + g);
      out.direct_values[p] = params.encoded_values[o * group + g];
    }
  }
  int64_t widest = 0;
  for (int64_t k = 0; k < layers; ++k) widest = n * copy_bytes[k] > widest ? n * copy_bytes[k] : widest;
  if (widest <= 65536) {
    out.direct_mapping16.assign(out.direct_mapping.begin(), out.direct_mapping.end());
    out.direct_mapping16.resize(out.direct_mapping16.size() + 4, 0);  // rows are read 8 bytes at a time
    out.direct_mapping = std::vector<int32_t>();
  }
}

}  // namespace

DerivedLayouts derive_layouts(const BlockParams& params) {
  DerivedLayouts out;
  const int n = params.lut_inputs;
  const int entries = 1 << n;
  int64_t rows = 0;
  for (int32_t size : params.layer_sizes) rows += size;
  out.lut_bytes = n == 8 ? 32 : 16;
  out.lut_tables.assign(static_cast<size_t>(rows) * out.lut_bytes, 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* bytes = out.lut_tables.data() + r * out.lut_bytes;
    for (int a = 0; a < entries; ++a) {
      if (!table_bit(params, r, a)) continue;
      if (n <= 4) {
        bytes[a] = 0xFF;
      } else {
        const int e = a & 15, h = a >> 4;
        bytes[(h >> 3) * 16 + e] |= static_cast<uint8_t>(1u << (h & 7));
      }
    }
  }

  const int32_t d_out = params.out_features;
  const int32_t group = params.layer_sizes.back() / d_out;
  out.sum_groups = (group + 3) / 4;
  out.sum_planes.assign(static_cast<size_t>(d_out) * out.sum_groups * 64, 0);
  for (int32_t o = 0; o < d_out; ++o) {
    for (int32_t j = 0; j < out.sum_groups; ++j) {
      uint8_t* planes = out.sum_planes.data() + (static_cast<size_t>(o) * out.sum_groups + j) * 64;
      for (int p = 0; p < 16; ++p) {
        int64_t sum = j == 0 ? params.bias[o] : 0;
        for (int b = 0; b < 4 && 4 * j + b < group; ++b)
          if (p >> b & 1) sum += params.encoded_values[static_cast<int64_t>(o) * group + 4 * j + b];
        const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(sum));  // |sum| < 2^31: exact
        for (int k = 0; k < 4; ++k) planes[16 * k + p] = static_cast<uint8_t>(bits >> (8 * k));
      }
    }
  }
  derive_direct_layout(params, out);
  return out;
}

BlockPlan make_plan(const BlockParams& params, const DerivedLayouts& layouts) {
  BlockPlan plan = params.plan();
  plan.lut_bytes = layouts.lut_bytes;
  plan.sum_groups = layouts.sum_groups;
  plan.lut_tables = layouts.lut_tables.data();
  plan.sum_planes = layouts.sum_planes.data();
  plan.direct_features = layouts.direct_features;
  plan.direct_outputs = layouts.direct_outputs;
  plan.direct_rows = layouts.direct_rows;
  plan.direct_copy_bytes = layouts.direct_copy_bytes.data();
  plan.direct_row_offsets = layouts.direct_row_offsets.data();
  plan.direct_thresholds = layouts.direct_thresholds.data();
  plan.direct_mapping = layouts.direct_mapping.empty() ? nullptr : layouts.direct_mapping.data();
  plan.direct_mapping16 = layouts.direct_mapping16.empty() ? nullptr : layouts.direct_mapping16.data();
  plan.direct_tables = layouts.direct_tables.data();
  plan.direct_values = layouts.direct_values.data();
  plan.direct_bias = layouts.direct_bias.data();
  plan.direct_scale = layouts.direct_scale.data();
  return plan;
}

}  // namespace quweit
