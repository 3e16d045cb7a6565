// Layouts of a validated block derived once at kernel creation for the byte-sliced path
// (byteslice_eval_impl.h: truth tables and sums indexed with 16-entry byte shuffles) and the direct
// path (direct_eval_impl.h: one token at a time, LUT addresses from pre-shifted bit copies).
#pragma once

#include <cstdint>
#include <vector>

#include "block_params.h"
#include "block_plan.h"

namespace quweit {

// lut_tables, per LUT row r (address a = lo + 16 * hi, lo = address bits 0-3, hi = bits 4-7):
//   n <= 4: byte e = 0xFF if table bit e is 1, else 0x00 (the shuffle result is the output mask);
//   n 5..7: bit h of byte e = table bit (16 h + e) (a shuffle by lo gives the candidates, hi picks one);
//   n = 8:  bytes 0..15 as for n = 7 (h < 8), bytes 16..31 the same for h = 8..15.
// sum_planes, per output o and group j of four LUTs (g = 4 j .. 4 j + 3 of o's group):
//   S[p] = (j == 0 ? bias[o] : 0) + sum of encoded_values[o G + 4 j + b] over the set bits b of p
//   (p < 16), stored as four 16-byte planes, plane k holding byte k (little-endian) of each S[p].
//   Every partial sum is within the validated accumulator bound, so int32 addition of the groups'
//   S values gives the spec's accumulator exactly.
// Direct path: a layer's input bits are held as n byte arrays ("copies"), copy l holding bit << l, so
// a LUT's address is the OR of one byte per slot. Thermometer bits are threshold-major (position
// t * direct_features + i) so they are compared 32 features at a time; hidden layers' bits keep their
// order. direct_mapping holds, per row and slot l, l * copy_bytes + position. The last layer's rows are
// reordered to (output block of 16, g, output in block), padded with all-zero LUTs to a multiple of 16
// outputs, so that 16 outputs' sums are vector additions (direct_values etc. in the same order).
// direct_rows = 0 when the copies would exceed 2^31 bytes (the path is then not offered). When every
// offset fits 16 bits (blocks up to about 1,300 features at T = 8, n = 6) the offsets are held as
// uint16 only (direct_mapping16; fewer bytes to load per LUT), else as int32 only (direct_mapping).
struct DerivedLayouts {
  int32_t lut_bytes = 16;
  int32_t sum_groups = 1;
  std::vector<uint8_t> lut_tables;
  std::vector<uint8_t> sum_planes;

  int32_t direct_features = 0, direct_outputs = 0, direct_rows = 0;
  std::vector<int32_t> direct_copy_bytes, direct_row_offsets;
  std::vector<int16_t> direct_thresholds;
  std::vector<int32_t> direct_mapping;
  std::vector<uint16_t> direct_mapping16;
  std::vector<uint64_t> direct_tables;
  std::vector<int32_t> direct_values, direct_bias;
  std::vector<float> direct_scale;
};

DerivedLayouts derive_layouts(const BlockParams& params);

// The plan of `params` with the derived layouts attached (both must outlive the plan).
BlockPlan make_plan(const BlockParams& params, const DerivedLayouts& layouts);

}  // namespace quweit
